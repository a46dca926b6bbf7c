"""Test double for rclpy.node.Node: records what the node creates and lets tests drive it.

Tests deliver messages with ``node.subscriptions[topic].callback(msg)``, call services with
``node.services[name].call(request)``, fire timers with ``timer.fire()``, set the clock with
``node.get_clock().set_ns(ns)`` and read published messages from ``node.publishers[topic].messages``.
"""
from __future__ import annotations

import logging
import threading
import time as _time
from typing import Any, Callable

from rcl_interfaces.msg import ParameterType, SetParametersResult
from rclpy.parameter import Parameter
from rclpy.time import Time

_PY_TYPES = {ParameterType.PARAMETER_BOOL: (bool,), ParameterType.PARAMETER_INTEGER: (int,),
             ParameterType.PARAMETER_DOUBLE: (float,), ParameterType.PARAMETER_STRING: (str,)}


class InvalidParameterTypeException(Exception):
    pass


class ParameterNotDeclaredException(Exception):
    pass


class Logger:
    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[tuple[str, str]] = []
        self._py = logging.getLogger(f"standin.{name}")
        self._lock = threading.Lock()

    def _log(self, level: str, msg: str, **kwargs: Any) -> None:
        with self._lock:
            self.records.append((level, str(msg)))
        self._py.log(getattr(logging, level.upper(), logging.INFO), msg)

    def debug(self, msg, **kw): self._log("debug", msg, **kw)
    def info(self, msg, **kw): self._log("info", msg, **kw)
    def warning(self, msg, **kw): self._log("warning", msg, **kw)
    warn = warning
    def error(self, msg, **kw): self._log("error", msg, **kw)
    def fatal(self, msg, **kw): self._log("fatal", msg, **kw)

    def messages(self, level: str) -> list[str]:
        with self._lock:
            return [m for lv, m in self.records if lv == level]


class Clock:
    """Wall time unless a test sets it (then it stays where it was set, like sim time)."""

    def __init__(self) -> None:
        self._ns: int | None = None

    def set_ns(self, ns: int) -> None:
        self._ns = int(ns)

    def now(self) -> Time:
        return Time(nanoseconds=_time.time_ns() if self._ns is None else self._ns)


class Publisher:
    def __init__(self, msg_type: Any, topic: str, qos: Any) -> None:
        self.msg_type, self.topic_name, self.qos = msg_type, topic, qos
        self.messages: list = []
        self.subscribers = 0  # what get_subscription_count reports; tests set it
        self._lock = threading.Lock()

    def publish(self, msg: Any) -> None:
        """Like rclpy: a message of the publisher's type, or its serialized bytes (kept here
        deserialized, as a subscriber would receive them)."""
        if isinstance(msg, (bytes, bytearray)):
            import _rosbags_msgs
            msg = _rosbags_msgs.typestore().deserialize_cdr(bytes(msg), self.msg_type.__msgtype__)
        elif not isinstance(msg, self.msg_type):
            raise TypeError(f"Expected {self.msg_type}, got {type(msg)}")
        with self._lock:
            self.messages.append(msg)

    def get_subscription_count(self) -> int:
        return self.subscribers


class Subscription:
    def __init__(self, msg_type: Any, topic: str, callback: Callable, qos: Any, group: Any) -> None:
        self.msg_type, self.topic_name, self.callback, self.qos, self.callback_group = \
            msg_type, topic, callback, qos, group


class Service:
    def __init__(self, srv_type: Any, name: str, callback: Callable, group: Any) -> None:
        self.srv_type, self.srv_name, self.callback, self.callback_group = srv_type, name, callback, group

    def call(self, request: Any = None) -> Any:
        req = request if request is not None else self.srv_type.Request()
        return self.callback(req, self.srv_type.Response())


class Timer:
    def __init__(self, period: float, callback: Callable, group: Any) -> None:
        self.timer_period_ns = int(period * 1e9)
        self.callback, self.callback_group = callback, group
        self.destroyed = False
        self.canceled = False

    def fire(self) -> None:
        self.callback()

    def cancel(self) -> None:
        self.canceled = True

    def reset(self) -> None:
        self.canceled = False

    def is_canceled(self) -> bool:
        return self.canceled


class Node:
    def __init__(self, node_name: str, *, namespace: str = "", parameter_overrides: list | None = None,
                 **kwargs: Any) -> None:
        self._name = node_name
        self._ns = namespace.rstrip("/")
        self._logger = Logger(node_name)
        self._clock = Clock()
        self._overrides = {p.name: p.value for p in (parameter_overrides or [])}
        self._params: dict[str, Parameter] = {}
        self._descriptors: dict[str, Any] = {}
        self._param_callbacks: list[Callable] = []
        self._pre_set_callbacks: list[Callable] = []
        self.publishers: dict[str, Publisher] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.services: dict[str, Service] = {}
        self.timers: list[Timer] = []

    # names
    def get_name(self) -> str:
        return self._name

    def resolve(self, name: str) -> str:
        if name.startswith("~/"):
            return f"{self._ns}/{self._name}/{name[2:]}"
        if name.startswith("/"):
            return name
        return f"{self._ns}/{name}"

    def get_logger(self) -> Logger:
        return self._logger

    def get_clock(self) -> Clock:
        return self._clock

    # parameters
    def declare_parameter(self, name: str, value: Any = None, descriptor: Any = None,
                          ignore_override: bool = False) -> Parameter:
        if name in self._params:
            raise RuntimeError(f"parameter {name} declared twice")
        if name in self._overrides and not ignore_override:
            value = self._overrides[name]
        if descriptor is not None and not descriptor.dynamic_typing and descriptor.type in _PY_TYPES:
            ok = _PY_TYPES[descriptor.type]
            if not isinstance(value, ok) or (bool not in ok and isinstance(value, bool)):
                raise InvalidParameterTypeException(f"{name}: {value!r} does not have the declared type")
        p = Parameter(name=name, value=value)
        self._params[name] = p
        self._descriptors[name] = descriptor
        return p

    def get_parameter(self, name: str) -> Parameter:
        if name not in self._params:
            raise ParameterNotDeclaredException(name)
        return self._params[name]

    def describe_parameter(self, name: str) -> Any:
        return self._descriptors[name]

    def add_on_set_parameters_callback(self, callback: Callable) -> None:
        self._param_callbacks.append(callback)

    def add_pre_set_parameters_callback(self, callback: Callable) -> None:
        """As in rclpy >= Jazzy: ``callback(parameters) -> parameters`` may modify the request."""
        self._pre_set_callbacks.append(callback)

    def set_parameters(self, parameters: list) -> list:
        results = []
        for cb in self._pre_set_callbacks:
            parameters = cb(list(parameters))
        for p in parameters:
            d = self._descriptors.get(p.name)
            if p.name not in self._params:
                results.append(SetParametersResult(successful=False, reason="not declared"))
                continue
            if d is not None and d.read_only:
                results.append(SetParametersResult(successful=False, reason=f"parameter {p.name} is read-only"))
                continue
            result = SetParametersResult(successful=True)
            for cb in self._param_callbacks:
                result = cb([p])
                if not result.successful:
                    break
            if result.successful:
                self._params[p.name] = Parameter(name=p.name, value=p.value)
            results.append(result)
        return results

    # entities
    def create_publisher(self, msg_type: Any, topic: str, qos: Any, **kwargs: Any) -> Publisher:
        pub = Publisher(msg_type, self.resolve(topic), qos)
        self.publishers[pub.topic_name] = pub
        return pub

    def create_subscription(self, msg_type: Any, topic: str, callback: Callable, qos: Any,
                            callback_group: Any = None, **kwargs: Any) -> Subscription:
        sub = Subscription(msg_type, self.resolve(topic), callback, qos, callback_group)
        self.subscriptions[sub.topic_name] = sub
        return sub

    def create_service(self, srv_type: Any, name: str, callback: Callable, callback_group: Any = None,
                       **kwargs: Any) -> Service:
        srv = Service(srv_type, self.resolve(name), callback, callback_group)
        self.services[srv.srv_name] = srv
        return srv

    def create_timer(self, period: float, callback: Callable, callback_group: Any = None, **kwargs: Any) -> Timer:
        t = Timer(period, callback, callback_group)
        self.timers.append(t)
        return t

    def destroy_publisher(self, pub: Publisher) -> None:
        self.publishers.pop(pub.topic_name, None)

    def destroy_subscription(self, sub: Subscription) -> None:
        self.subscriptions.pop(sub.topic_name, None)

    def destroy_service(self, srv: Service) -> None:
        self.services.pop(srv.srv_name, None)

    def destroy_timer(self, timer: Timer) -> None:
        timer.destroyed = True
        if timer in self.timers:
            self.timers.remove(timer)

    def destroy_node(self) -> None:
        pass
