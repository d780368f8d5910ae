// Validates custom resources (KEDA, Prometheus Operator) against their CRDs' schemas, with the validators of
// @kubernetes-models/keda and @kubernetes-models/prometheus-operator (package.json pins them; `npm ci` here, or
// ensure_node_validators in deploy/local/common.sh, installs them). tests/deploy/test_crd_schemas.py runs it.
//
//   node crd_validate.mjs [FILE]    FILE or stdin: JSON, one object, an array of objects, or a List (`items`)
//
// Prints one JSON line per object, {"apiVersion", "kind", "name", "errors": ["/path: message", ...]}, in input
// order; an object of a kind these packages do not model gets the error "no schema". Exits 1 when any object
// has an error, 2 when the input cannot be read.
import { readFileSync } from "node:fs";

/** The package that models each API group. */
const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "eventing.keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

/** The model class of an apiVersion and kind, or undefined. One module per kind: loading them all takes a second. */
async function modelOf(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !version || !/^[A-Za-z0-9]+$/.test(version) || !/^[A-Z][A-Za-z0-9]*$/.test(String(kind))) {
    return undefined;
  }
  let module;
  try {
    module = await import(`${pkg}/${group}/${version}/${kind}`);
  } catch (e) {
    if (e.code === "ERR_MODULE_NOT_FOUND" || e.code === "ERR_PACKAGE_PATH_NOT_EXPORTED") return undefined;
    throw e;
  }
  const Model = module[kind];
  // A resource's class, not one of its parts' (e.g. ScaledObjectSpec).
  return Model?.apiVersion === apiVersion && Model?.kind === kind ? Model : undefined;
}

async function errorsOf(obj) {
  const Model = await modelOf(obj?.apiVersion, obj?.kind);
  if (!Model) {
    return [`no schema for apiVersion ${obj?.apiVersion} kind ${obj?.kind}`];
  }
  try {
    new Model(obj).validate();
    return [];
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    return e.errors.map((err) => {
      const detail = err.params?.additionalProperty
        ? `: ${err.params.additionalProperty}`
        : err.params?.allowedValues
          ? `: ${err.params.allowedValues.join(", ")}`
          : "";
      return `${err.instancePath || "/"}: ${err.message}${detail}`;
    });
  }
}

let input;
try {
  input = JSON.parse(readFileSync(process.argv[2] ?? 0, "utf8"));
} catch (e) {
  console.error(`crd_validate: cannot read JSON from ${process.argv[2] ?? "stdin"}: ${e.message}`);
  process.exit(2);
}
const objects = Array.isArray(input) ? input : Array.isArray(input?.items) ? input.items : [input];

let failed = false;
for (const obj of objects) {
  const errors = await errorsOf(obj);
  failed ||= errors.length > 0;
  const line = { apiVersion: obj?.apiVersion, kind: obj?.kind, name: obj?.metadata?.name, errors };
  console.log(JSON.stringify(line));
}
process.exitCode = failed ? 1 : 0;
