//! A client's row: column -> text value (`None` for NULL), kept sorted by
//! column in one flat vector ([`litemap`]). A row of a few columns is one
//! allocation; two rows compare as two slices; a decoded row is sorted once.
//!
//! It reads (and `Debug`-prints) as the `BTreeMap` it replaces: the same
//! order, the same last-wins rule for a repeated column.

use super::Text;
use litemap::LiteMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::fmt;

/// A materialised row: column -> text value (`None` for NULL).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientRow(LiteMap<Text, Option<Text>>);

impl ClientRow {
    pub fn new() -> ClientRow {
        ClientRow::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The column's value (`Some(None)`: NULL; `None`: no such column).
    pub fn get(&self, column: &str) -> Option<&Option<Text>> {
        self.0.get(column)
    }

    pub fn contains_key(&self, column: &str) -> bool {
        self.0.contains_key(column)
    }

    /// Sets a column, returning its previous value.
    pub fn insert(&mut self, column: Text, value: Option<Text>) -> Option<Option<Text>> {
        self.0.insert(column, value)
    }

    /// Drops a column, returning its value.
    pub fn remove(&mut self, column: &str) -> Option<Option<Text>> {
        self.0.remove(column)
    }

    /// Columns and values, by column.
    pub fn iter(&self) -> impl Iterator<Item = (&Text, &Option<Text>)> {
        self.0.iter()
    }

    /// Columns, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Text> {
        self.0.iter().map(|(column, _)| column)
    }
}

impl fmt::Debug for ClientRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&str> for ClientRow {
    type Output = Option<Text>;

    fn index(&self, column: &str) -> &Option<Text> {
        self.get(column).expect("no such column in the row")
    }
}

impl FromIterator<(Text, Option<Text>)> for ClientRow {
    fn from_iter<I: IntoIterator<Item = (Text, Option<Text>)>>(iter: I) -> ClientRow {
        ClientRow(LiteMap::from_iter(iter))
    }
}

/// Later values of a column replace earlier ones.
impl Extend<(Text, Option<Text>)> for ClientRow {
    fn extend<I: IntoIterator<Item = (Text, Option<Text>)>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl IntoIterator for ClientRow {
    type Item = (Text, Option<Text>);
    type IntoIter = std::vec::IntoIter<(Text, Option<Text>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_tuple_vec().into_iter()
    }
}

impl<const N: usize> From<[(Text, Option<Text>); N]> for ClientRow {
    fn from(columns: [(Text, Option<Text>); N]) -> ClientRow {
        columns.into_iter().collect()
    }
}

impl<'de> Deserialize<'de> for ClientRow {
    /// A JSON object of text or null values: collected as it comes (a row
    /// arrives in table order), then sorted once.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ClientRow, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = ClientRow;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of column names to text or null")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClientRow, A::Error> {
                const TYPICAL_COLUMNS: usize = 8;
                let mut columns = Vec::with_capacity(map.size_hint().unwrap_or(TYPICAL_COLUMNS));
                while let Some(entry) = map.next_entry::<Text, Option<Text>>()? {
                    columns.push(entry);
                }
                Ok(columns.into_iter().collect())
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn text(s: &str) -> Text {
        Text::from(s)
    }

    #[test]
    fn reads_and_prints_as_the_btreemap_it_replaces() {
        let json = r#"{"id":"1","note":null,"flag":"true","id":"2","a":"x"}"#;
        let row: ClientRow = serde_json::from_str(json).expect("a row");
        let map: BTreeMap<Text, Option<Text>> = serde_json::from_str(json).expect("a map");
        assert_eq!(format!("{row:?}"), format!("{map:?}"));
        assert!(row.iter().eq(map.iter()));
        assert_eq!(
            row["id"].as_deref(),
            Some("2"),
            "the last value of a column wins"
        );
        assert_eq!(row.len(), 4);
        assert!(serde_json::from_str::<ClientRow>(r#"{"id":1}"#).is_err());
    }

    #[test]
    fn extend_replaces_and_sorts() {
        let mut row = ClientRow::from([(text("id"), Some(text("1"))), (text("b"), None)]);
        row.extend([(text("a"), Some(text("x"))), (text("b"), Some(text("y")))]);
        let keys: Vec<&str> = row.keys().map(Text::as_str).collect();
        assert_eq!(keys, ["a", "b", "id"]);
        assert_eq!(row["b"].as_deref(), Some("y"));
        assert_eq!(row.insert(text("a"), None), Some(Some(text("x"))));
        assert!(!row.contains_key("c"));
    }
}
