"""Exceptions that carry a message meant for the user.

Library code raises these for bad input (missing files, wrong encodings, malformed arrays).
The CLI prints their message on one line and exits with status 2, without a traceback; the
ROS nodes log them and count the skip.
"""


class ReconError(Exception):
    """Base class of every error recon_ros raises on purpose."""


class UserInputError(ReconError, ValueError):
    """The input (file, array, message, argument) is wrong; the message says how to fix it."""


class CheckpointError(UserInputError):
    """A checkpoint is missing, unreadable, or does not match the model."""


class DataFormatError(UserInputError):
    """A bag, dataset folder, image or message cannot be decoded."""
