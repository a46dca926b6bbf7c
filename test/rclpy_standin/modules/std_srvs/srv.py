"""Test double for std_srvs.srv (rosbags has no service types): Trigger and SetBool."""
from dataclasses import dataclass


class Trigger:
    @dataclass
    class Request:
        pass

    @dataclass
    class Response:
        success: bool = False
        message: str = ""


class SetBool:
    @dataclass
    class Request:
        data: bool = False

    @dataclass
    class Response:
        success: bool = False
        message: str = ""
