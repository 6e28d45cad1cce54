"""The package is laid out as ROS 2 and the design ask: ament_python at the root, pure-PyTorch model library."""

import ast
import pathlib
import re
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_model_library_never_imports_ros():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "threeam_model").rglob("*.py")
        if re.search(
            r"^\s*(import|from)\s+(rclpy|rosidl|sensor_msgs|std_msgs|threeam_interfaces)\b", path.read_text(), re.M
        )
    ]
    assert offenders == []
    assert "rclpy" not in "".join(p.read_text() for p in (REPO / "threeam_model").rglob("*.py"))


def test_package_xml_format3_with_real_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "threeam_ros"
    deps = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "threeam_interfaces", "diagnostic_msgs"} <= deps
    assert root.find("export/build_type").text == "ament_python"
    iface = ET.parse(REPO / "threeam_interfaces" / "package.xml").getroot()
    assert iface.find("export/build_type").text == "ament_cmake"
    assert iface.findtext("member_of_group") == "rosidl_interface_packages"


def test_setup_installs_marker_launch_config_and_entry_points():
    tree = ast.parse((REPO / "setup.py").read_text())
    text = (REPO / "setup.py").read_text()
    assert (REPO / "resource" / "threeam_ros").is_file()
    for needle in (
        '"share/" + package_name + "/launch"',
        '"share/" + package_name + "/config"',
        'resource/" + package_name',
    ):
        assert needle in text
    scripts = [
        ast.literal_eval(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.List) and any(isinstance(e, ast.Constant) and " = " in str(e.value) for e in node.elts)
    ][0]
    for entry in scripts:
        name, target = (s.strip() for s in entry.split("="))
        module, func = target.split(":")
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"console script {name} points at missing {path}"
        assert f"def {func}(" in path.read_text(), f"console script {name}: {module} has no {func}()"
    assert list((REPO / "launch").glob("*.launch.py")) and list((REPO / "config").glob("*.yaml"))


def test_training_folder_is_not_an_importable_package():
    # sam2 installs a top-level package named `training`; ours must never shadow it.
    assert not (REPO / "training" / "__init__.py").exists()


def test_one_error_module_and_must3r_below_the_tracker_interface():
    # Every exception class of the model library lives in threeam_model/errors.py (one of each name), and the own
    # MUSt3R package does not depend on the tracker API for its error bases.
    defined = {}
    for path in (REPO / "threeam_model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    assert {name: where for name, where in defined.items() if where != ["threeam_model/errors.py"]} == {}
    must3r = "".join(p.read_text() for p in (REPO / "threeam_model" / "must3r").rglob("*.py"))
    assert not re.search(r"^\s*from\s+(\.\.|threeam_model\.)interface\b", must3r, re.M)


def _runtime_imports(tree: ast.AST):
    """Import nodes that run (module level or inside functions), leaving out `if TYPE_CHECKING:` blocks."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_the_model_library_has_no_import_cycle():
    # Lazy (function-level) imports count: a cycle through them still ties two modules into one. A module's own
    # package __init__ runs before it, so that edge is not followed.
    mods = {}
    for path in (REPO / "threeam_model").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        edges[name] = {
            prefix
            for t in targets
            for prefix in (".".join(t.split(".")[: i + 1]) for i in range(t.count(".") + 1))
            if prefix in mods and prefix != "threeam_model" and prefix != name and not name.startswith(prefix + ".")
        }
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(mods):
        if name not in state:
            visit(name, [name])
    assert cycles == []
