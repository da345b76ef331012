#!/usr/bin/python3
"""The Kubernetes manifests in etc/kubernetes/ agree with each other and with vduse-bridge-csi.

Usage: check-kubernetes.py [SOURCE-ROOT]   (default: two levels up from this script)

Loads every etc/kubernetes/*.yaml and checks that the CSIDriver, the node plugin's DaemonSet and
the example volumes fit together: one driver name everywhere, the plugin's socket where the
sidecars and kubelet look for it, the mounts the plugin needs, string volume attributes with a
known backend type, Block and Filesystem volumes used as such, secrets that exist. Every problem
is reported; exit 1 if there is any, 77 without python3-yaml.
"""

import glob
import os
import sys

try:
    import yaml
except ImportError:
    print("VB_SKIP: python3-yaml not installed")
    sys.exit(77)

BACKEND_TYPES = {"nbd", "iscsi", "file", "memory"}
PLUGIN_RUN_DIR = "/run/vduse-bridge"


def plugin_tables(root):
    """The attribute keys the plugin chooses itself and the secret keys it knows, read from its
    source so that the manifests are checked against what the plugin does, not a copy."""
    import re
    with open(os.path.join(root, "src", "csi", "volume_spec.cpp"), encoding="utf-8") as f:
        src = f.read()
    plugin = re.search(r"kPluginKeys = \{([^}]*)\}", src)
    secrets = re.search(r"kSecrets\[\] = \{(.*?)\n\};", src, re.S)
    if not plugin or not secrets:
        sys.exit("check-kubernetes: kPluginKeys or kSecrets not found in src/csi/volume_spec.cpp")
    return (set(re.findall(r'"([^"]+)"', plugin.group(1))),
            set(re.findall(r'\{"([^"]+)",', secrets.group(1))))

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


class Section:
    """Prints "ok: TEXT" at the end when no problem was added inside."""

    def __init__(self, text):
        self.text = text

    def __enter__(self):
        self.before = len(problems)
        return self

    def __exit__(self, *exc):
        if exc[0] is None and len(problems) == self.before:
            print(f"ok: {self.text}")
        return False


def get(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def as_list(value):
    return value if isinstance(value, list) else []


def where_of(doc):
    kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
    name = get(doc, "metadata", "name", default="?")
    return f"{doc_file.get(id(doc), '?')}: {kind} {name}"


def namespace_of(doc):
    return get(doc, "metadata", "namespace", default="default")


def flags(container):
    """The container's --flag=value / --flag value arguments, as a dict (a bare flag maps to True)."""
    words = [str(w) for w in as_list(container.get("command")) + as_list(container.get("args"))]
    out = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            if "=" in w:
                k, v = w.split("=", 1)
                out[k] = v
            elif i + 1 < len(words) and not words[i + 1].startswith("-"):
                out[w] = words[i + 1]
                i += 1
            else:
                out[w] = True
        i += 1
    return out


def strip_unix(endpoint):
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            return endpoint[len(prefix):]
    return None


def resolve(container, path):
    """(volume name, path inside the volume) for a path seen by the container, by its mounts."""
    best = None
    for m in as_list(container.get("volumeMounts")):
        mp = str(m.get("mountPath", "")).rstrip("/") or "/"
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m.get("name"))
    if best is None:
        return None
    rest = path[len(best[0]):].lstrip("/")
    return best[1], rest


def pod_specs():
    """(doc, pod spec) of every Pod and every workload's pod template."""
    for doc in docs:
        kind = doc.get("kind")
        if kind == "Pod":
            yield doc, doc.get("spec") or {}
        elif kind in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"):
            yield doc, get(doc, "spec", "template", "spec", default={}) or {}


def containers_of(spec):
    return as_list(spec.get("initContainers")) + as_list(spec.get("containers"))


def main():
    global docs, doc_file, PLUGIN_KEYS, SECRET_KEYS
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    PLUGIN_KEYS, SECRET_KEYS = plugin_tables(root)
    files = sorted(glob.glob(os.path.join(root, "etc", "kubernetes", "*.yaml")))
    docs, doc_file = [], {}
    if not files:
        problem(os.path.join(root, "etc", "kubernetes"), "no *.yaml file")

    with Section(f"{len(files)} files parse, every document has apiVersion, kind and metadata.name"):
        for path in files:
            rel = os.path.relpath(path, root)
            try:
                with open(path, encoding="utf-8") as f:
                    loaded = list(yaml.safe_load_all(f))
            except (OSError, yaml.YAMLError) as e:
                problem(rel, f"does not load: {e}")
                continue
            for n, doc in enumerate(loaded):
                if doc is None:
                    continue
                if not isinstance(doc, dict):
                    problem(rel, f"document {n + 1} is not a map")
                    continue
                doc_file[id(doc)] = rel
                for key in ("apiVersion", "kind"):
                    if not isinstance(doc.get(key), str) or not doc.get(key):
                        problem(rel, f"document {n + 1} has no {key}")
                if not isinstance(get(doc, "metadata", "name"), str) or not get(doc, "metadata", "name"):
                    problem(rel, f"document {n + 1} ({doc.get('kind', '?')}) has no metadata.name")
                docs.append(doc)

    def of_kind(kind):
        return [d for d in docs if d.get("kind") == kind]

    # --- The CSIDriver ---
    driver = None
    with Section("the CSIDriver: one, attachRequired false"):
        drivers = of_kind("CSIDriver")
        if len(drivers) != 1:
            problem("etc/kubernetes", f"expected exactly one CSIDriver, found {len(drivers)}")
        if drivers:
            d = drivers[0]
            driver = get(d, "metadata", "name")
            if d.get("apiVersion") != "storage.k8s.io/v1":
                problem(where_of(d), f"apiVersion is {d.get('apiVersion')!r}, expected storage.k8s.io/v1")
            if get(d, "spec", "attachRequired") is not False:
                problem(where_of(d), "spec.attachRequired must be false (the plugin has no controller)")

    # --- The node plugin's DaemonSet ---
    plugin = registrar = prober = None
    ds = None
    for d in of_kind("DaemonSet"):
        for c in containers_of(get(d, "spec", "template", "spec", default={}) or {}):
            if "--endpoint" in flags(c):
                ds, plugin = d, c
    if ds is None:
        problem("etc/kubernetes", "no DaemonSet with a plugin container (one whose args have --endpoint)")
    else:
        spec = get(ds, "spec", "template", "spec", default={}) or {}
        volumes = {v.get("name"): v for v in as_list(spec.get("volumes"))}
        for c in containers_of(spec):
            image = str(c.get("image", ""))
            if "csi-node-driver-registrar" in image:
                registrar = c
            elif "livenessprobe" in image:
                prober = c

        def host_path(volume_name):
            return get(volumes.get(volume_name), "hostPath", "path")

        def mount_of(container, mount_path):
            for m in as_list(container.get("volumeMounts")):
                if str(m.get("mountPath", "")).rstrip("/") == mount_path:
                    return m
            return None

        pw = f"{where_of(ds)}: container {plugin.get('name')}"
        with Section("the plugin container: --endpoint, --nodeid, privileged, kubelet/dev/run mounts"):
            pf = flags(plugin)
            endpoint = pf.get("--endpoint")
            endpoint_path = strip_unix(endpoint) if isinstance(endpoint, str) else None
            if not endpoint_path or not endpoint_path.startswith("/"):
                problem(pw, f"--endpoint {endpoint!r} is not unix:///PATH")
            nodeid = pf.get("--nodeid")
            if not isinstance(nodeid, str) or not nodeid:
                problem(pw, "no --nodeid NAME argument")
            elif nodeid.startswith("$(") and nodeid.endswith(")"):
                var = nodeid[2:-1]
                env = {e.get("name"): e for e in as_list(plugin.get("env"))}
                if var not in env:
                    problem(pw, f"--nodeid uses $({var}) but the container has no env {var}")
                elif get(env[var], "valueFrom", "fieldRef", "fieldPath") != "spec.nodeName":
                    problem(pw, f"env {var} is not from fieldRef spec.nodeName")
            if get(plugin, "securityContext", "privileged") is not True:
                problem(pw, "securityContext.privileged must be true (mounts, /dev)")
            m = mount_of(plugin, "/var/lib/kubelet")
            if m is None:
                problem(pw, "does not mount /var/lib/kubelet")
            else:
                if m.get("mountPropagation") != "Bidirectional":
                    problem(pw, f"/var/lib/kubelet has mountPropagation {m.get('mountPropagation')!r}, "
                                "expected Bidirectional (kubelet must see the plugin's mounts)")
                if host_path(m.get("name")) != "/var/lib/kubelet":
                    problem(pw, f"/var/lib/kubelet is mounted from {host_path(m.get('name'))!r}, "
                                "expected hostPath /var/lib/kubelet")
            for path in ("/dev", PLUGIN_RUN_DIR):
                m = mount_of(plugin, path)
                if m is None:
                    problem(pw, f"does not mount {path}")
                elif host_path(m.get("name")) != path:
                    problem(pw, f"{path} is mounted from hostPath {host_path(m.get('name'))!r}, expected the "
                                "same path (the host daemon opens the files the plugin names)")

        with Section("the sidecars find the plugin's socket; kubelet's registration path is the driver's"):
            plugin_sock = resolve(plugin, endpoint_path) if endpoint_path else None
            if endpoint_path and plugin_sock is None:
                problem(pw, f"--endpoint {endpoint_path} is on no volume mount (the sidecars cannot reach it)")
            for role, c in (("node-driver-registrar", registrar), ("livenessprobe", prober)):
                if c is None:
                    problem(where_of(ds), f"no {role} container")
                    continue
                cw = f"{where_of(ds)}: container {c.get('name')}"
                addr = flags(c).get("--csi-address")
                if not isinstance(addr, str):
                    problem(cw, "no --csi-address")
                    continue
                addr = strip_unix(addr) or addr
                got = resolve(c, addr)
                if got is None:
                    problem(cw, f"--csi-address {addr} is on no volume mount")
                elif plugin_sock is not None and got != plugin_sock:
                    problem(cw, f"--csi-address {addr} is {got[1]!r} on volume {got[0]!r}, but the plugin "
                                f"listens at {plugin_sock[1]!r} on volume {plugin_sock[0]!r}")
            if registrar is not None:
                rw = f"{where_of(ds)}: container {registrar.get('name')}"
                reg = flags(registrar).get("--kubelet-registration-path")
                expected = f"/var/lib/kubelet/plugins/{driver}/csi.sock"
                if reg != expected:
                    problem(rw, f"--kubelet-registration-path is {reg!r}, expected {expected!r} "
                                "(the CSIDriver's name)")
                if plugin_sock is not None:
                    hp = host_path(plugin_sock[0])
                    if hp != f"/var/lib/kubelet/plugins/{driver}":
                        problem(where_of(ds), f"socket volume {plugin_sock[0]!r} has hostPath {hp!r}, expected "
                                              f"/var/lib/kubelet/plugins/{driver}")
                    elif isinstance(reg, str) and reg != f"{hp}/{plugin_sock[1]}":
                        problem(rw, f"--kubelet-registration-path {reg} is not the host path of the plugin's "
                                    f"socket, {hp}/{plugin_sock[1]}")
                if not any(str(m.get("mountPath", "")).rstrip("/") == "/registration" and
                           host_path(m.get("name")) == "/var/lib/kubelet/plugins_registry"
                           for m in as_list(registrar.get("volumeMounts"))):
                    problem(rw, "does not mount hostPath /var/lib/kubelet/plugins_registry at /registration")

        with Section("the plugin's liveness probe is the livenessprobe sidecar's --http-endpoint, patient enough"):
            port = get(plugin, "livenessProbe", "httpGet", "port")
            if port is None:
                problem(pw, "no livenessProbe.httpGet.port")
            else:
                if isinstance(port, str) and not port.isdigit():
                    named = [p.get("containerPort") for p in as_list(plugin.get("ports")) if p.get("name") == port]
                    if not named:
                        problem(pw, f"livenessProbe port {port!r} names no port of the container")
                    port = named[0] if named else None
                health = None
                if prober is not None:
                    pf = flags(prober)
                    if "--health-port" in pf:
                        problem(where_of(ds), "livenessprobe: --health-port is deprecated, use --http-endpoint=:PORT")
                    endpoint = pf.get("--http-endpoint", ":9808")
                    health = str(endpoint).rsplit(":", 1)[-1]
                    # Probe answers at once, but a loaded node answers late: 1 s (the default)
                    # restarts a plugin that is only slow, killing an mkfs it runs.
                    timeout = str(pf.get("--probe-timeout", "1s"))
                    if not timeout.endswith("s") or not timeout[:-1].isdigit() or int(timeout[:-1]) < 5:
                        problem(where_of(ds), f"livenessprobe --probe-timeout {timeout}: expected at least 5s")
                if port is not None and health is not None and str(port) != health:
                    problem(pw, f"livenessProbe port {port} is not the livenessprobe's --http-endpoint port {health}")

        with Section("the plugin runs on every node, tainted ones too, and is not evicted first"):
            if not any(t.get("operator") == "Exists" and not t.get("key") for t in as_list(spec.get("tolerations"))):
                problem(where_of(ds), "no toleration {operator: Exists}: nodes with taints get no plugin, and "
                                      "their pods' volumes never stage")
            if spec.get("priorityClassName") != "system-node-critical":
                problem(where_of(ds), "priorityClassName is not system-node-critical")

        with Section("the DaemonSet's namespace and service account are defined"):
            ns = get(ds, "metadata", "namespace")
            if ns and ns != "default" and not any(get(n, "metadata", "name") == ns for n in of_kind("Namespace")):
                problem(where_of(ds), f"namespace {ns!r} is not defined by a Namespace")
            sa = spec.get("serviceAccountName")
            if sa and not any(get(s, "metadata", "name") == sa and namespace_of(s) == namespace_of(ds)
                              for s in of_kind("ServiceAccount")):
                problem(where_of(ds), f"serviceAccountName {sa!r} is not a ServiceAccount in {namespace_of(ds)!r}")

    with Section("every volumeMount and volumeDevice names a volume of its pod"):
        for doc, spec in pod_specs():
            declared = {v.get("name") for v in as_list(spec.get("volumes"))}
            for c in containers_of(spec):
                for key in ("volumeMounts", "volumeDevices"):
                    for m in as_list(c.get(key)):
                        if m.get("name") not in declared:
                            problem(where_of(doc), f"container {c.get('name')}: {key} names volume "
                                                   f"{m.get('name')!r}, which the pod does not declare")

    # --- The example volumes ---
    pvs = [pv for pv in of_kind("PersistentVolume") if get(pv, "spec", "csi") is not None]
    with Section(f"{len(pvs)} PersistentVolumes: the driver, string attributes, a known type, secrets"):
        for pv in pvs:
            w = where_of(pv)
            csi = get(pv, "spec", "csi")
            if csi.get("driver") != driver:
                problem(w, f"csi.driver is {csi.get('driver')!r}, not the CSIDriver's name {driver!r}")
            if not csi.get("volumeHandle"):
                problem(w, "no csi.volumeHandle")
            # No attach step: only ReadWriteOncePod keeps a writable filesystem on one node.
            modes = set(as_list(get(pv, "spec", "accessModes")))
            if get(pv, "spec", "volumeMode", default="Filesystem") == "Filesystem" and modes & {"ReadWriteOnce",
                                                                                               "ReadWriteMany"}:
                problem(w, f"accessModes {sorted(modes)}: a writable filesystem volume needs ReadWriteOncePod "
                           "(nothing else stops two nodes mounting it)")
            attrs = csi.get("volumeAttributes") or {}
            if not isinstance(attrs, dict):
                problem(w, "csi.volumeAttributes is not a map")
                attrs = {}
            for k, v in attrs.items():
                if not isinstance(v, str):
                    problem(w, f"volumeAttributes {k}: {v!r} is a {type(v).__name__}, Kubernetes requires a "
                               "string (quote it)")
                if k in PLUGIN_KEYS:
                    problem(w, f"volumeAttributes {k}: chosen by the plugin, it refuses it")
            if attrs.get("type") not in BACKEND_TYPES:
                problem(w, f"volumeAttributes type is {attrs.get('type')!r}, expected one of "
                           f"{', '.join(sorted(BACKEND_TYPES))}")
            ref = csi.get("nodeStageSecretRef")
            if ref is not None:
                secrets = [s for s in of_kind("Secret") if get(s, "metadata", "name") == ref.get("name")
                           and namespace_of(s) == ref.get("namespace", "default")]
                if not secrets:
                    problem(w, f"nodeStageSecretRef names Secret {ref.get('namespace', 'default')}/"
                               f"{ref.get('name')}, which no file defines")
                for s in secrets:
                    keys = set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
                    for k in sorted(keys - SECRET_KEYS):
                        problem(where_of(s), f"key {k!r} is not a node-stage secret the plugin uses "
                                             f"({', '.join(sorted(SECRET_KEYS))})")
                    if "chap-username" in attrs and "chap-password" not in keys:
                        problem(w, "chap-username without a chap-password in its node-stage secret")

    with Section("Block volumes are used through volumeDevices, Filesystem ones through volumeMounts"):
        pvcs = of_kind("PersistentVolumeClaim")
        for pv in pvs:
            w = where_of(pv)
            name = get(pv, "metadata", "name")
            mode = get(pv, "spec", "volumeMode", default="Filesystem")
            claims = [c for c in pvcs if get(c, "spec", "volumeName") == name]
            if not claims:
                problem(w, "no PersistentVolumeClaim binds it (spec.volumeName)")
            used = False
            for claim in claims:
                cmode = get(claim, "spec", "volumeMode", default="Filesystem")
                if cmode != mode:
                    problem(where_of(claim), f"volumeMode {cmode} but its PersistentVolume {name} is {mode}")
                for doc, spec in pod_specs():
                    if namespace_of(doc) != namespace_of(claim):
                        continue
                    vols = {v.get("name") for v in as_list(spec.get("volumes"))
                            if get(v, "persistentVolumeClaim", "claimName") == get(claim, "metadata", "name")}
                    for c in containers_of(spec):
                        for key in ("volumeMounts", "volumeDevices"):
                            for m in as_list(c.get(key)):
                                if m.get("name") not in vols:
                                    continue
                                used = True
                                want = "volumeDevices" if mode == "Block" else "volumeMounts"
                                if key != want:
                                    problem(where_of(doc), f"container {c.get('name')} uses {mode} volume {name} "
                                                           f"through {key}, expected {want}")
            if claims and not used:
                problem(w, "no pod uses it")

    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        print(f"{len(problems)} problem(s) in etc/kubernetes/")
        return 1
    return 0


docs = []
doc_file = {}

if __name__ == "__main__":
    sys.exit(main())
