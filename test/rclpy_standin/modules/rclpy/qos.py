"""Test double for rclpy.qos: the profile record and the policy enums."""
import enum
from dataclasses import dataclass


class QoSReliabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT = 0
    RELIABLE = 1
    BEST_EFFORT = 2


class QoSDurabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT = 0
    TRANSIENT_LOCAL = 1
    VOLATILE = 2


class QoSHistoryPolicy(enum.IntEnum):
    SYSTEM_DEFAULT = 0
    KEEP_LAST = 1
    KEEP_ALL = 2


@dataclass
class QoSProfile:
    history: QoSHistoryPolicy = QoSHistoryPolicy.KEEP_LAST
    depth: int = 10
    reliability: QoSReliabilityPolicy = QoSReliabilityPolicy.RELIABLE
    durability: QoSDurabilityPolicy = QoSDurabilityPolicy.VOLATILE


qos_profile_sensor_data = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                                     durability=QoSDurabilityPolicy.VOLATILE)
qos_profile_system_default = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.SYSTEM_DEFAULT,
                                        durability=QoSDurabilityPolicy.SYSTEM_DEFAULT)
