// Validate one .glb / .gltf with the Khronos glTF-Validator (npm "gltf-validator") and print
// its JSON report on stdout. Usage: node gltf_validate.js FILE [NODE_MODULES_DIR]
"use strict";
const fs = require("fs");
const path = require("path");
const file = process.argv[2];
const modules = process.argv[3];
const validator = require(modules ? path.resolve(modules, "gltf-validator") : "gltf-validator");
const data = new Uint8Array(fs.readFileSync(file));
validator.validateBytes(data, {uri: path.basename(file), maxIssues: 100})
  .then((report) => { process.stdout.write(JSON.stringify(report)); })
  .catch((err) => { process.stderr.write(String(err) + "\n"); process.exit(2); });
