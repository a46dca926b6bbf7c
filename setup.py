"""recon_ros: an ament_python package that also installs with plain pip."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "recon_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Online learned 3D reconstruction (Spann3R) for ROS 2, usable without ROS.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    # colcon ignores install_requires; pip honours it. torch is installed separately
    # (see README) so that CPU-only machines do not pull CUDA wheels.
    install_requires=[
        "numpy>=1.21",
        "scipy>=1.8",
        "opencv-python-headless>=4.5",
        "pillow>=9",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "rosbags>=0.10",
    ],
    extras_require={
        "test": ["pytest>=7", "mcap>=1.1", "mcap-ros2-support>=0.5"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "recon-ros = recon_ros.cli:main",
            "recon_node = recon_ros.ros.recon_node:main",
            "recon_refiner = recon_ros.ros.refiner_node:main",
        ],
    },
)
