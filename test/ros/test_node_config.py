"""The node's parameter table, config/tracker.yaml and launch/tracker.launch.py agree; bad configs stop the node at
start with a message that names the parameter.

`ros2 launch` is not installable here (no PyPI wheel), so the launch file is checked by parsing it, and its one
function is run against a minimal stand-in of the launch API that only records what it is given.
"""

import ast
import subprocess
import sys
import types

import pytest
import ros_helpers as rh
import yaml

from threeam_ros.params import PARAMS, PARAMS_BY_NAME, check_value, flatten_yaml

LAUNCH = rh.REPO / "launch" / "tracker.launch.py"


def yaml_params() -> dict:
    tree = yaml.safe_load(rh.CONFIG.read_text())
    assert list(tree) == ["/**"], "the parameters file applies to any node name"
    return flatten_yaml(tree["/**"]["ros__parameters"])


def test_yaml_holds_exactly_the_declared_parameters_with_their_defaults():
    values = yaml_params()
    assert set(values) == set(PARAMS_BY_NAME)
    for name, value in values.items():
        default = PARAMS_BY_NAME[name].default
        assert type(value) is type(default), f"{name}: {value!r} in the YAML, {default!r} declared"
        assert value == default, f"{name}: the YAML says {value!r}, the declared default is {default!r}"


def test_readme_table_lists_every_parameter_with_its_default():
    rows = {}
    for line in (rh.REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].strip("`") in PARAMS_BY_NAME:
            rows[cells[0].strip("`")] = cells[1].strip("`")
    assert set(rows) == set(PARAMS_BY_NAME), set(PARAMS_BY_NAME) ^ set(rows)
    for name, default in rows.items():
        assert default == str(PARAMS_BY_NAME[name].default), f"README says {name} = {default}"


def test_every_parameter_is_described_and_its_default_allowed():
    assert len({p.name for p in PARAMS}) == len(PARAMS)
    for p in PARAMS:
        assert len(p.description) > 15, p.name
        assert check_value(p, p.default) is None, p.name
    assert check_value(PARAMS_BY_NAME["publish.label_encoding"], "mono32")
    assert check_value(PARAMS_BY_NAME["tracker.max_objects"], 0)
    assert check_value(PARAMS_BY_NAME["publish.overlay_alpha"], 1.5)


def test_launch_file_imports_only_launch_packages_and_names_real_parameters():
    tree = ast.parse(LAUNCH.read_text())
    top_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_imports.add(node.module.split(".")[0])
    assert top_imports <= {"launch", "launch_ros", "os"}, top_imports  # never the model (torch) in a launch file
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names
    assigned = {
        n.targets[0].id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id.isupper()
    }
    for param in assigned["PARAMETER_ARGUMENTS"].values():
        assert param in PARAMS_BY_NAME, f"the launch file overrides {param}, which the node does not declare"
        assert isinstance(PARAMS_BY_NAME[param].default, str), f"{param}: launch arguments are strings"
    for param in assigned["BOOLEAN_ARGUMENTS"].values():
        assert isinstance(PARAMS_BY_NAME[param].default, bool), f"{param} is not a boolean parameter"
    inner_topics = {inner for inner, _ in assigned["REMAPPING_ARGUMENTS"].values()}
    for param in ("topics.image", "reid.depth_topic", "reid.camera_info_topic"):
        assert PARAMS_BY_NAME[param].default in inner_topics, f"no remapping argument for {param}"


def test_launch_description_builds_the_node_with_config_overrides_and_remappings(monkeypatch, tmp_path):
    recorded = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration(Recorder):
        def perform(self, context):
            return context[self.args[0]]

    class Node(Recorder):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            recorded["node"] = kwargs

    class FindPackageShare(Recorder):
        def perform(self, context):
            return str(rh.REPO)  # the installed share folder has the repository's launch/ and config/ layout

    stand_in = {
        "launch": dict(LaunchDescription=Recorder),
        "launch.actions": dict(DeclareLaunchArgument=Recorder, OpaqueFunction=Recorder),
        "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration, PathJoinSubstitution=Recorder),
        "launch_ros.actions": dict(Node=Node),
        "launch_ros.substitutions": dict(FindPackageShare=FindPackageShare),
    }
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    for name, attrs in stand_in.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    namespace = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), namespace)
    description = namespace["generate_launch_description"]()
    actions = description.args[0]
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions if "default_value" in a.kwargs}
    assert {"config", "image", "device", "sam2_checkpoint"} <= set(declared)
    opaque = actions[-1]
    context = {name: value for name, value in declared.items() if isinstance(value, str)}
    my_config = tmp_path / "my.yaml"
    my_config.write_text(rh.CONFIG.read_text())
    context.update(config=str(my_config), device="cuda", image="/camera/color/image_raw")
    opaque.kwargs["function"](context)
    node = recorded["node"]
    assert node["package"] == "threeam_ros" and node["executable"] == "tracker_node"
    assert node["name"] == "threeam_tracker"
    assert node["parameters"] == [str(my_config), {"model.device": "cuda"}]  # empty arguments keep the YAML's
    assert ("image", "/camera/color/image_raw") in node["remappings"]
    opaque.kwargs["function"]({**context, "random_weights": "True"})
    assert recorded["node"]["parameters"][1] == {"model.device": "cuda", "model.tiny": True}
    with pytest.raises(ValueError, match="random_weights must be true or false, got 'yes'"):
        opaque.kwargs["function"]({**context, "random_weights": "yes"})
    opaque.kwargs["function"]({**context, "autostart": "false"})  # the node stays unconfigured
    assert recorded["node"]["parameters"][1] == {"model.device": "cuda", "lifecycle.autostart": False}
    with pytest.raises(FileNotFoundError, match="parameters file '/nowhere/tracker.yaml' does not exist"):
        opaque.kwargs["function"]({**context, "config": "/nowhere/tracker.yaml"})
    # the Fast DDS profile for HD frames: on by default, off with false, or a file of the user's
    profile = str(rh.REPO / "config" / "fastdds_large_frames.xml")
    assert node["additional_env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": profile}
    opaque.kwargs["function"]({**context, "fastdds_profile": "false"})
    assert recorded["node"]["additional_env"] == {}
    opaque.kwargs["function"]({**context, "fastdds_profile": str(my_config)})
    assert recorded["node"]["additional_env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": str(my_config)}
    with pytest.raises(FileNotFoundError, match="Fast DDS profile '/nowhere.xml' does not exist"):
        opaque.kwargs["function"]({**context, "fastdds_profile": "/nowhere.xml"})
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/the/users/own.xml")  # a profile already set is kept
    opaque.kwargs["function"](context)
    assert recorded["node"]["additional_env"] == {}
    setup = (rh.REPO / "setup.py").read_text()
    assert "tracker_node = threeam_ros.tracker_node:main" in setup


@pytest.mark.ros
@pytest.mark.parametrize(
    "override, needle",
    [
        ("input.transport:=carrier_pigeon", "input.transport must be one of raw, compressed"),
        ("tracker.max_objects:=0", "tracker.max_objects must be >= 1"),
        ("model.tiny:=false", "threeam-download-weights"),
        ("publish.label_encoding:=mono32", "publish.label_encoding must be one of mono16, mono8"),
        # torch would assert deep inside the model build; cuda:99 is unusable with or without a GPU here
        ("model.device:=cuda:99", "device 'cuda:99' is not usable"),
        ("publish.overlay_alpha:=1.5", "publish.overlay_alpha must be <= 1"),
    ],
)
def test_bad_configuration_stops_the_node_with_a_clear_message(override, needle, tmp_path):
    rh.require_isolation()
    cmd = rh.node_command(rh.TINY) + ["-p", override]  # the last -p of a name wins
    env = rh.node_env(THREEAM_WEIGHTS=str(tmp_path))  # no official weights there
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_tf_pose_source_without_tf2_ros_stops_the_node_with_a_clear_message():
    # The PyPI ROS 2 stack here has no tf2_ros: asking for TF poses must say so and name the alternatives.
    rh.require_isolation()
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.fail("tf2_ros is installed here: this test's premise (PyPI ROS 2 without tf2) no longer holds")
    overrides = ["reid.enabled:=true", "reid.source:=rgbd", "reid.world_frame:=map"]
    cmd = rh.node_command(rh.TINY) + [a for o in overrides for a in ("-p", o)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=rh.node_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "tf2_ros is not installed" in proc.stderr and "reid.pose_topic" in proc.stderr, proc.stderr


@pytest.mark.ros
def test_unknown_names_in_the_parameters_file_are_refused_at_configure(tmp_path):
    rh.require_isolation()
    tree = yaml.safe_load(rh.CONFIG.read_text())
    tree["/**"]["ros__parameters"]["publish"]["overlay_alhpa"] = 0.3  # the typos a user made
    tree["/**"]["ros__parameters"]["tracker"]["max_object"] = 4
    tree["/**"]["ros__parameters"]["tracker"]["max_conditioning_frames"] = "eight"  # and a wrong type
    config = tmp_path / "typos.yaml"
    config.write_text(yaml.safe_dump(tree))
    proc = subprocess.run(
        rh.node_command(rh.TINY, config), capture_output=True, text=True, timeout=120, env=rh.node_env()
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown parameter(s) publish.overlay_alhpa, tracker.max_object " in proc.stderr, proc.stderr
    assert "tracker.max_conditioning_frames must be a int, got 'eight'" in proc.stderr, proc.stderr


@pytest.mark.ros
def test_a_missing_parameters_file_is_a_clear_error(tmp_path):
    rh.require_isolation()
    missing = tmp_path / "nowhere.yaml"
    proc = subprocess.run(
        rh.node_command(rh.TINY, missing), capture_output=True, text=True, timeout=60, env=rh.node_env()
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"parameters file {missing} does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_every_descriptor_carries_its_range_and_choices():
    from threeam_ros.params import descriptor

    for p in PARAMS:
        d = descriptor(p)
        assert d.description == p.description and not d.dynamic_typing
        for choice in p.choices:
            assert str(choice) in d.additional_constraints, p.name
        if p.runtime:
            assert "read at configure" not in d.additional_constraints, p.name
        else:
            assert "read at configure" in d.additional_constraints, p.name
        ranges = list(d.integer_range) + list(d.floating_point_range)
        if p.min_value is None and p.max_value is None:
            assert not ranges, p.name
            continue
        (r,) = ranges
        assert r.from_value == (p.min_value if p.min_value is not None else r.from_value), p.name
        if p.max_value is not None:
            assert r.to_value == p.max_value, p.name
    alpha = descriptor(PARAMS_BY_NAME["publish.overlay_alpha"]).floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    assert descriptor(PARAMS_BY_NAME["tracker.max_objects"]).integer_range[0].from_value == 1


def test_interface_comments_name_real_parameters_and_agree_with_the_readme_on_stamps():
    import re

    interfaces = rh.REPO / "threeam_interfaces"
    for path in sorted(interfaces.glob("*/*.msg")) + sorted(interfaces.glob("*/*.srv")):
        comments = " ".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
        for name in re.findall(r"\b(?:publish|tracker|model|input|reid|topics|diagnostics)[._]\w+", comments):
            assert name in PARAMS_BY_NAME, f"{path.name} names {name}, which is not a node parameter"
    srv = (interfaces / "srv" / "AddPrompt.srv").read_text()
    readme = (rh.REPO / "README.md").read_text()
    assert "keeps only its newest frame" in srv and "another stamp is refused: only the newest frame" in readme
    assert "int64 object_id" in srv and "int64 object_id" in (interfaces / "srv" / "RemoveObject.srv").read_text()


def test_readme_names_exactly_the_parameters_that_change_at_run_time():
    import re

    line = next(line for line in (rh.REPO / "README.md").read_text().splitlines() if "may change at run time" in line)
    named = set(re.findall(r"`([a-z0-9_]+\.[a-z0-9_]+)`", line))
    assert named == {p.name for p in PARAMS if p.runtime}, line
