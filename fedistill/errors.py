"""Errors the library raises for bad input. The CLI prints their message on one line (exit 2)."""


class FedistillError(Exception):
    """Base class: an input the user can fix (bad flag, missing data, corrupt file)."""


class DatasetNotFoundError(FedistillError):
    """A dataset's files are absent and could not be downloaded."""


class DatasetCorruptError(FedistillError):
    """A dataset's files are present but malformed (wrong header, truncated, labels out of
    range)."""


class UnknownNameError(FedistillError, KeyError):
    """A name (dataset, method, model, partitioner) that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SyntheticSetError(FedistillError, ValueError):
    """A synthetic-set file or payload that is malformed, truncated or unsafe."""


class ConfigError(FedistillError, ValueError):
    """A configuration value out of range or not applicable."""


class PrivacyBudgetExceeded(FedistillError):
    """A private method was asked to spend more (epsilon, delta) than its budget allows."""
