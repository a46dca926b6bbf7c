"""Static checks of the ament_python packaging: package.xml against the imports, setup.py's
data_files and entry points, and the layout colcon expects."""
from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# imported top-level module -> the package.xml key that provides it (None: a pip requirement
# documented in the README, with no dependable rosdep key)
DEPENDENCY_KEYS = {
    "rclpy": "rclpy", "launch": "launch", "launch_ros": "launch_ros",
    "ament_index_python": "ament_index_python", "rcl_interfaces": "rcl_interfaces",
    "lifecycle_msgs": "lifecycle_msgs", "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs", "sensor_msgs": "sensor_msgs", "geometry_msgs": "geometry_msgs",
    "nav_msgs": "nav_msgs", "visualization_msgs": "visualization_msgs", "std_srvs": "std_srvs", "tf2_msgs": "tf2_msgs", "tf2_ros": "tf2_ros_py",
    "diagnostic_msgs": "diagnostic_msgs", "diagnostic_updater": "diagnostic_updater",
    "numpy": "python3-numpy", "scipy": "python3-scipy", "cv2": "python3-opencv", "yaml": "python3-yaml",
    "PIL": "python3-pil", "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib",
    "torch": None, "rosbags": None,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _exec_depends() -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {e.text.strip() for e in root.findall("exec_depend")} | {e.text.strip() for e in root.findall("depend")}


def test_package_xml_is_an_ament_python_package():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "recon_ros"
    assert root.find("export/build_type").text == "ament_python"
    assert root.findtext("license")
    assert (REPO / "resource" / "recon_ros").is_file()
    assert (REPO / "setup.cfg").read_text().count("$base/lib/recon_ros") == 2


def test_every_import_of_the_package_has_a_dependency():
    files = list((REPO / "recon_ros").rglob("*.py")) + list((REPO / "launch").glob("*.py"))
    stdlib = set(sys.stdlib_module_names)
    deps = _exec_depends()
    unknown, missing = set(), set()
    for f in files:
        for mod in _imports(f) - stdlib - {"recon_ros", "__future__"}:
            if mod not in DEPENDENCY_KEYS:
                unknown.add(f"{mod} ({f.relative_to(REPO)})")
            elif DEPENDENCY_KEYS[mod] is not None and DEPENDENCY_KEYS[mod] not in deps:
                missing.add(f"{DEPENDENCY_KEYS[mod]} (imported as {mod} in {f.relative_to(REPO)})")
    assert not unknown, f"imports without a known dependency key: {sorted(unknown)}"
    assert not missing, f"package.xml lacks exec_depends: {sorted(missing)}"
    # the pip-only requirements are documented
    readme = (REPO / "docs" / "ros.md").read_text()
    assert "torch" in readme and "rosbags" in readme


def test_only_the_ros_package_imports_rclpy():
    ros_only = {"rclpy", "tf2_ros", "diagnostic_updater", "launch", "launch_ros"}
    for f in (REPO / "recon_ros").rglob("*.py"):
        if f.parent.name == "ros":
            continue
        assert not (_imports(f) & ros_only), f"{f.relative_to(REPO)} imports ROS-only modules"


def test_setup_installs_launch_config_rviz_and_real_entry_points():
    tree = ast.parse((REPO / "setup.py").read_text())
    text = (REPO / "setup.py").read_text()
    for pattern in ("launch/*.launch.py", "config/*.yaml", "rviz/*.rviz"):
        assert f'glob("{pattern}")' in text
        assert glob(str(REPO / pattern)), f"{pattern} matches no file"
    assert '"share/ament_index/resource_index/packages"' in text and "package.xml" in text
    scripts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and " = recon_ros." in n.value]
    names = {s.split("=")[0].strip() for s in scripts}
    assert {"recon-ros", "recon_node", "recon_refiner"} <= names
    for script in scripts:
        module, func = script.split("=")[1].strip().split(":")
        path = REPO / (module.replace(".", "/") + ".py")
        defs = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in defs, f"{script}: {func} not defined in {path.name}"
