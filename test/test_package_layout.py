"""The package is laid out as ROS 2 and the design ask: ament_python at the root, pure-PyTorch model library."""

import ast
import pathlib
import re
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[1]


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
