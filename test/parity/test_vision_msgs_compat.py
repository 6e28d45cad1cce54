"""The vision_msgs this project runs against is wire-identical to the official vision_msgs 4.1.1.

On PyPI-only installs scripts/setup_env.sh builds compat/vision_msgs into the venv; a system vision_msgs takes its
place where there is one. Either way every type's RIHS01 hash must equal the official one recorded in
../shared/reference/vision_msgs/type_hashes.json, read three ways: the installed type description JSON, the C type
support that rmw reads, and (ROS test) the hash the middleware advertises for a publisher.
"""

import ctypes
import importlib
import json
import pathlib
import re
import time
import xml.etree.ElementTree as ET

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
COMPAT = REPO / "compat" / "vision_msgs"
NAMES = [
    "BoundingBox2D",
    "BoundingBox2DArray",
    "BoundingBox3D",
    "BoundingBox3DArray",
    "Classification",
    "Detection2D",
    "Detection2DArray",
    "Detection3D",
    "Detection3DArray",
    "LabelInfo",
    "ObjectHypothesis",
    "ObjectHypothesisWithPose",
    "Point2D",
    "Pose2D",
    "VisionClass",
    "VisionInfo",
]


@pytest.fixture(scope="module")
def reference(shared_dir) -> dict:
    path = shared_dir / "reference" / "vision_msgs" / "type_hashes.json"
    if not path.is_file():
        pytest.fail(f"the official vision_msgs hashes are missing: expected {path}")
    hashes = json.loads(path.read_text())
    assert sorted(hashes) == [f"vision_msgs/msg/{n}" for n in NAMES]
    return hashes


@pytest.fixture(scope="module")
def prefix() -> pathlib.Path:
    """The install prefix of the importable vision_msgs (the venv, or a system ROS 2)."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"vision_msgs is not installed ({exc}): `bash scripts/setup_env.sh` builds compat/vision_msgs")
    import vision_msgs

    # <prefix>/lib/python3.X/site-packages/vision_msgs/__init__.py
    return pathlib.Path(vision_msgs.__file__).resolve().parents[4]


def _fields(description: dict) -> list:
    return [(f["name"], f["type"]) for f in description["type_description_msg"]["type_description"]["fields"]]


def test_compat_package_declares_the_official_name_version_and_all_types():
    root = ET.parse(COMPAT / "package.xml").getroot()
    assert root.findtext("name") == "vision_msgs" and root.findtext("version") == "4.1.1"
    assert {e.text for e in root.findall("depend")} == {"std_msgs", "geometry_msgs"}
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    assert sorted(p.stem for p in (COMPAT / "msg").glob("*.msg")) == NAMES
    listed = re.findall(r'"msg/(\w+)\.msg"', (COMPAT / "CMakeLists.txt").read_text())
    assert sorted(listed) == NAMES


def test_threeam_ros_depends_on_vision_msgs():
    root = ET.parse(REPO / "package.xml").getroot()
    assert "vision_msgs" in {e.text for e in root.findall("depend")}


@pytest.mark.parametrize("name", NAMES)
def test_type_description_hash_is_official(name, prefix, reference, shared_dir):
    path = prefix / "share" / "vision_msgs" / "msg" / f"{name}.json"
    assert path.is_file(), f"{path} is missing: vision_msgs at {prefix} was not built with rosidl type descriptions"
    installed = json.loads(path.read_text())
    top = installed["type_hashes"][0]
    assert top["type_name"] == f"vision_msgs/msg/{name}"
    official = json.loads((shared_dir / "reference" / "vision_msgs" / "descriptions" / f"{name}.json").read_text())
    assert top["hash_string"] == reference[f"vision_msgs/msg/{name}"], (
        f"{name} differs from vision_msgs 4.1.1\n installed: {_fields(installed)}\n official:  {_fields(official)}"
    )


class _TypeHash(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint8), ("value", ctypes.c_uint8 * 32)]


class _MessageTypeSupport(ctypes.Structure):
    pass


# rosidl_message_type_support_t (rosidl_runtime_c/message_type_support_struct.h, Kilted)
_MessageTypeSupport._fields_ = [
    ("typesupport_identifier", ctypes.c_char_p),
    ("data", ctypes.c_void_p),
    ("func", ctypes.c_void_p),
    ("get_type_hash_func", ctypes.CFUNCTYPE(ctypes.POINTER(_TypeHash), ctypes.POINTER(_MessageTypeSupport))),
    ("get_type_description_func", ctypes.c_void_p),
    ("get_type_description_sources_func", ctypes.c_void_p),
]


def test_c_type_support_reports_the_official_hashes(prefix, reference):
    msg = importlib.import_module("vision_msgs.msg")
    for name in NAMES:
        # loads the generated libraries (and their ROS dependencies) into this process by soname
        getattr(msg, name).__class__.__import_type_support__()
    lib = ctypes.CDLL(str(prefix / "lib" / "libvision_msgs__rosidl_typesupport_c.so"))
    got = {}
    for name in NAMES:
        handle = getattr(lib, f"rosidl_typesupport_c__get_message_type_support_handle__vision_msgs__msg__{name}")
        handle.restype = ctypes.POINTER(_MessageTypeSupport)
        ts = handle()
        h = ts.contents.get_type_hash_func(ts).contents
        got[f"vision_msgs/msg/{name}"] = f"RIHS{h.version:02d}_{bytes(h.value).hex()}"
    assert got == reference


@pytest.mark.ros
def test_middleware_advertises_the_official_hashes(prefix, reference):
    import ros_helpers as rh

    rh.require_isolation()
    import rclpy

    msg = importlib.import_module("vision_msgs.msg")
    rclpy.init()
    node = rclpy.create_node("vision_msgs_hash_check")
    got = {}
    try:
        for i, name in enumerate(NAMES):
            topic = f"/vision_msgs_hash_check_{i}"
            pub = node.create_publisher(getattr(msg, name), topic, 1)
            deadline = time.monotonic() + 10
            while not (infos := node.get_publishers_info_by_topic(topic)) and time.monotonic() < deadline:
                time.sleep(0.02)
            node.destroy_publisher(pub)
            assert len(infos) == 1, f"{topic}: {infos}"
            assert infos[0].topic_type == f"vision_msgs/msg/{name}"
            got[infos[0].topic_type] = str(infos[0].topic_type_hash)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    assert got == reference
