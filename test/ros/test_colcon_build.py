"""`colcon build` of this repo as a ROS 2 workspace, the way a user with a system ROS 2 builds it.

The ROS 2 underlay here is the PyPI stack in the project venv; colcon comes from its own venv (scripts/test.sh
exports THREEAM_COLCON_VENV). Both packages must build, and the install tree must hold what `ros2 launch` and
`ros2 run` look for.
"""

import os
import pathlib
import subprocess
import sys

import pytest
import ros_helpers as rh

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_colcon_builds_both_packages(tmp_path):
    colcon_venv = os.environ.get("THREEAM_COLCON_VENV")
    if not colcon_venv:
        pytest.fail("THREEAM_COLCON_VENV is not set: run the tests through scripts/test.sh")
    src = tmp_path / "src" / "threeam"
    src.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(
        ["tar", "-c", "--null", "-T", "-", "-f", "-"],
        cwd=REPO,
        input=files,
        check=True,
        stdout=open(tmp_path / "src.tar", "wb"),
    )
    subprocess.run(["tar", "-x", "-f", str(tmp_path / "src.tar"), "-C", str(src)], check=True)

    venv = pathlib.Path(sys.executable).parent.parent
    env = dict(
        os.environ,
        AMENT_PREFIX_PATH=str(venv),
        CMAKE_PREFIX_PATH=str(venv),
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
    )
    # The repo root is itself a package, so colcon's crawl does not descend into threeam_interfaces/ by itself:
    # the README's build line names both base paths, exactly as here.
    result = subprocess.run(
        [
            f"{colcon_venv}/bin/colcon",
            "build",
            "--base-paths",
            "src/threeam",
            "src/threeam/threeam_interfaces",
            "--event-handlers",
            "console_direct-",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 packages finished" in result.stdout

    install = tmp_path / "install"
    share = install / "threeam_ros" / "share" / "threeam_ros"
    assert (share / "launch" / "tracker.launch.py").is_file()
    assert (share / "config" / "tracker.yaml").is_file()
    assert (share / "config" / "fastdds_large_frames.xml").is_file()  # the launch file's default Fast DDS profile
    assert (share / "package.xml").is_file()
    assert (install / "threeam_ros" / "share" / "ament_index" / "resource_index" / "packages" / "threeam_ros").is_file()
    node_exe = install / "threeam_ros" / "lib" / "threeam_ros" / "tracker_node"
    assert os.access(node_exe, os.X_OK)
    # `ros2 launch`/`ros2 run` exec this file: its shebang must find the python that has rclpy and torch
    assert node_exe.read_text().splitlines()[0] == "#!/usr/bin/env python3"
    site = next((install / "threeam_interfaces" / "lib").glob("python3*/site-packages"))
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import threeam_interfaces; from threeam_interfaces.srv import AddPrompt; "
            "print(threeam_interfaces.__file__); print(AddPrompt.Request().object_id)",
        ],
        env=dict(env, PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    where, object_id = probe.stdout.split()
    assert where.startswith(str(site)) and object_id == "0"

    # ...and the installed executable really starts (a bad parameter makes it stop at once with exit code 2)
    iface_site = next((install / "threeam_interfaces" / "lib").glob("python3*/site-packages"))
    node_site = next((install / "threeam_ros" / "lib").glob("python3*/site-packages"))
    rh.require_isolation()
    run = subprocess.run(
        [str(node_exe), "--ros-args", "-p", "input.transport:=carrier_pigeon"],
        env=dict(env, PYTHONPATH=f"{node_site}:{iface_site}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "input.transport must be one of" in run.stderr, run.stdout + run.stderr
