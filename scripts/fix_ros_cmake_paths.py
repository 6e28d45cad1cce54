"""Rewrite the build-machine Python include paths baked into the ROS 2 wheels' CMake export files.

The PyPI ROS wheels were built under /opt/python/cp311-cp311/; their *.cmake files name that prefix for the
Python and numpy headers, so cmake refuses to configure a package (threeam_interfaces) against them.
"""

import pathlib
import re
import sys
import sysconfig

import numpy

venv = pathlib.Path(sys.argv[1])
py_include = sysconfig.get_paths()["include"]
np_include = numpy.get_include()
pattern = re.compile(r"/opt/python/cp3\d+-cp3\d+[^;\"\s)]*")


def replace(match: re.Match) -> str:
    path = match.group(0)
    if "numpy" in path:
        return np_include
    if "include/python3" in path:
        return py_include
    return path


changed = 0
for cmake_file in venv.rglob("*.cmake"):
    text = cmake_file.read_text(errors="surrogateescape")
    new = pattern.sub(replace, text)
    if new != text:
        cmake_file.write_text(new, errors="surrogateescape")
        changed += 1
print(f"[fix_ros_cmake_paths] rewrote {changed} cmake files (python {py_include}, numpy {np_include})")
