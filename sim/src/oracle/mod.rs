//! The checking side of the harness: nothing here reuses engine routing,
//! evaluation or storage code.

mod bind;
pub mod rows;
pub mod where_eval;
