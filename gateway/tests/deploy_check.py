"""Checks the deployment files in config/deploy/ (run by gateway/tests/gateway/deploy.rs).

- Every Kubernetes object validates, strictly, against the Kubernetes API schemas
  (kubernetes-validate, from PyPI), and the KEDA ScaledObject against KEDA's own CRD schema
  (@kubernetes-models/keda, from npm; its folder is WEIR_NODE_MODULES).
- The pieces agree with each other: every Service, PodDisruptionBudget and the ScaledObject select or
  target what exists; probes hit /healthz and /readyz on the port Weir listens on; every Secret key
  and ConfigMap the pods use is one the manifests define or document.
- Every Weir configuration in them (each ConfigMap's *.toml and container.toml) passes
  `weir config check` (WEIR_BIN), with the environment the pods give it.

Prints one line per check and "N passed, 0 failed" at the end; exits non-zero on any failure.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "deploy")
WEIR = os.environ["WEIR_BIN"]
NODE_MODULES = os.environ["WEIR_NODE_MODULES"]
K8S_VERSION = "1.33.0"

passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


def documents():
    for path in sorted(glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield os.path.relpath(path, ROOT), doc


def validate_keda(obj):
    script = """
const { ScaledObject } = require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject");
const obj = JSON.parse(require("fs").readFileSync(0, "utf8"));
new ScaledObject(obj).validate();
"""
    env = dict(os.environ, NODE_PATH=NODE_MODULES)
    run = subprocess.run(["node", "-e", script], input=json.dumps(obj), text=True, capture_output=True, env=env)
    return run.returncode == 0, run.stderr.strip()[-500:]


def pod_specs(objects):
    for path, obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield path, obj, obj["spec"]["template"]


def containers(pod):
    spec = pod["spec"]
    return spec.get("initContainers", []) + spec.get("containers", [])


def weir_containers(pod):
    return [c for c in containers(pod) if c.get("image", "").startswith("weir:")]


def main():
    objects = list(documents())
    check("found the manifests", len(objects) >= 7, f"{len(objects)} objects")

    # Schemas.
    for path, obj in objects:
        name = f"{path}: {obj['kind']}/{obj.get('metadata', {}).get('name', '')}"
        if obj["kind"] == "ScaledObject":
            ok, detail = validate_keda(obj)
            check(f"{name} validates against KEDA's CRD schema", ok, detail)
        elif obj["kind"] == "Kustomization":
            listed = sorted(obj["resources"])
            here = sorted(
                os.path.basename(p)
                for p in glob.glob(os.path.join(ROOT, os.path.dirname(path), "*.yaml"))
                if not p.endswith("kustomization.yaml")
            )
            check(f"{name} lists every manifest beside it", listed == here, f"{listed} vs {here}")
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
                check(f"{name} validates (strict) against Kubernetes {K8S_VERSION}", True)
            except kubernetes_validate.ValidationError as e:
                check(f"{name} validates (strict) against Kubernetes {K8S_VERSION}", False, str(e)[:500])

    by_kind = {}
    for path, obj in objects:
        by_kind.setdefault(obj["kind"], []).append((path, obj))
    workloads = {(o["kind"], o["metadata"]["name"]): o for _, o in by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])}

    def selected(selector, dir_):
        return [
            o for p, o in by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
            if os.path.dirname(p) == dir_
            and all(o["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]

    # Selectors and targets.
    for path, svc in by_kind.get("Service", []):
        pods = selected(svc["spec"]["selector"], os.path.dirname(path))
        check(f"{path}: Service/{svc['metadata']['name']} selects a workload", len(pods) == 1, svc["spec"]["selector"])
        ports = {p["name"] for pod in pods for c in containers(pod["spec"]["template"]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            check(f"{path}: Service/{svc['metadata']['name']} port {port['name']} targets a named container port", port["targetPort"] in ports)
    for path, pdb in by_kind.get("PodDisruptionBudget", []):
        pods = selected(pdb["spec"]["selector"]["matchLabels"], os.path.dirname(path))
        check(f"{path}: PodDisruptionBudget selects the replicas", len(pods) == 1)
    for path, so in by_kind.get("ScaledObject", []):
        ref = so["spec"]["scaleTargetRef"]
        check(f"{path}: ScaledObject targets {ref['kind']}/{ref['name']}", (ref["kind"], ref["name"]) in workloads)
        queries = [t["metadata"]["query"] for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
        check(f"{path}: ScaledObject scales on weir_in_flight_requests", any("weir_in_flight_requests" in q for q in queries), queries)
    for path, sts in by_kind.get("StatefulSet", []):
        names = {s["metadata"]["name"] for _, s in by_kind.get("Service", [])}
        check(f"{path}: StatefulSet's serviceName exists", sts["spec"]["serviceName"] in names)

    # The pods' Weir containers, against the TOML they are given.
    config_maps = {o["metadata"]["name"]: (p, o) for p, o in by_kind.get("ConfigMap", [])}
    configs = []
    for path, workload, pod in pod_specs(objects):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for c in weir_containers(pod):
            where = f"{path}: {workload['kind']}/{workload['metadata']['name']} container {c['name']}"
            args = c.get("args", [])
            check(f"{where} runs weir serve --config", args[:2] == ["serve", "--config"], args)
            config_path = args[2]
            mount = next((m for m in c.get("volumeMounts", []) if config_path.startswith(m["mountPath"] + "/")), None)
            cm = volumes.get(mount["name"], {}).get("configMap", {}).get("name") if mount else None
            check(f"{where} mounts its config from a ConfigMap", cm in config_maps, config_path)
            if cm not in config_maps:
                continue
            key = os.path.relpath(config_path, mount["mountPath"])
            toml = config_maps[cm][1]["data"].get(key)
            check(f"{where} finds {key} in ConfigMap/{cm}", toml is not None)
            listen = next((l.split("=", 1)[1].strip().strip('"') for l in toml.splitlines() if l.startswith("listen")), "")
            port = int(listen.rsplit(":", 1)[1])
            for probe, route in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
                if probe not in c:
                    continue
                get = c[probe]["httpGet"]
                named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                probe_port = named.get(get["port"], get["port"])
                check(f"{where} {probe} asks {route} on the port weir listens on", (get["path"], probe_port) == (route, port), get)
            check(f"{where} has a readiness probe on /readyz", c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz")
            requests = c.get("resources", {}).get("requests", {})
            check(f"{where} requests CPU and memory", "cpu" in requests and "memory" in requests, requests)
            # Every ${VAR} without a default must come from the container's env.
            env = {e["name"] for e in c.get("env", [])}
            needed = set()
            for part in toml.split("${")[1:]:
                var = part.split("}", 1)[0]
                if ":-" not in var:
                    needed.add(var)
            check(f"{where} sets every variable its config needs", needed <= env, needed - env)
            for ref in c.get("env", []):
                secret = ref.get("valueFrom", {}).get("secretKeyRef")
                if secret:
                    documented = any(secret["key"] in open(p).read() for p in glob.glob(os.path.join(ROOT, os.path.dirname(path), "*.yaml")))
                    check(f"{where} secret key {secret['name']}/{secret['key']} is documented beside it", documented)
            sample = {v: ("0" * 64 if "SHA256" in v else "redis://127.0.0.1:6379" if "URL" in v else "sample-value-0123456789") for v in env | needed}
            configs.append((f"{config_maps[cm][0]}: ConfigMap/{cm} {key}", toml, sample))

    with open(os.path.join(ROOT, "container.toml")) as f:
        configs.append(("container.toml", f.read(), {"WEIR_API_KEY": "sample-key-0123456789"}))

    for name, toml, env in configs:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "weir.toml")
            # The pods' volumes are not here: their paths move into the temporary folder.
            for volume in ("/var/lib/weir", "/var/cache/weir"):
                toml = toml.replace(volume, os.path.join(tmp, volume.strip("/").replace("/", "-")))
            with open(path, "w") as f:
                f.write(toml)
            base = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_") and k not in env}
            run = subprocess.run([WEIR, "config", "check", path], env={**base, **env}, capture_output=True, text=True, timeout=300)
            check(f"{name} passes weir config check", run.returncode == 0 and ": ok (" in run.stdout, (run.stdout + run.stderr)[-800:])

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


main()
