"""Every error the till agent raises on purpose, grouped by what the caller does next.

::

    TillAgentError
    ├── InvalidSale            bad input: reject it, nothing was consumed (field + rule)
    ├── ConfigurationError     fail at start-up or at the command line
    │   └── PinRejected            a token refused the PIN: not tried again until a restart
    ├── FiscalError            stop selling on this register until an operator acts
    │   ├── RegisterStateError     not initialised, already closed (Schlussbeleg), ...
    │   └── ConflictError          a request_id reused with a different sale
    ├── SigningError           the signature unit could not produce a valid signature
    │   ├── UnitUnavailable        error or deadline exceeded: the unit is down
    │   ├── InvalidSignature       the unit answered with a signature that does not verify
    │   └── OutcomeUnknown         a chain service may or may not have signed: ask it later
    ├── DepFormatError         a DEP export or crypto container is not of the documented form
    │                          (defined in agent.at_rksv.dep)
    ├── BackupFailed           a DEP backup could not be written (directory, permissions,
    │                          full disk): the service retries it at its next run
    ├── StorageError           the till database could not do what was asked
    │   ├── DataDirLocked          another process owns this data directory
    │   ├── RestorePending         a restore into the data directory did not finish
    │   └── DatabaseMissing        no till database, but a till lived in the data directory
    └── NotFound               a receipt, register or unit that does not exist
"""

from __future__ import annotations

__all__ = [
    "BackupFailed",
    "ConfigurationError",
    "ConflictError",
    "DataDirLocked",
    "DatabaseMissing",
    "FiscalError",
    "InvalidSale",
    "InvalidSignature",
    "NoDatabase",
    "NotFound",
    "OutcomeUnknown",
    "PinRejected",
    "PrinterError",
    "RegisterClosed",
    "RegisterRefused",
    "RegisterStateError",
    "RestorePending",
    "SigningError",
    "StorageError",
    "TillAgentError",
    "UnitUnavailable",
    "WaitsForUnit",
]


class TillAgentError(Exception):
    """Root of every error raised by the till agent on purpose."""


class InvalidSale(TillAgentError):
    """A sale (or any request) that breaks a rule; it consumed no number.

    Args:
        field: dotted path of the offending field, e.g. ``lines.0.vat``.
        rule: short machine-readable rule name, e.g. ``vat-class``.
        message: a sentence for the person who wrote the POS integration.
    """

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} [{rule}]")
        self.field = field
        self.rule = rule
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "rule": self.rule, "message": self.message}


class RegisterClosed(InvalidSale):
    """The register was closed by its Schlussbeleg: a refusal by its state (the CLI's exit
    4, the local API's 409), raised before anything was consumed."""

    def __init__(self, register_id: str) -> None:
        super().__init__(
            "register", "register-closed", f"register {register_id} was closed by its Schlussbeleg"
        )


class RegisterRefused(InvalidSale):
    """The configuration refuses the register's sales (it signs with the development unit
    under ``development_unit = false``): a refusal by its state, as :class:`RegisterClosed`
    (the CLI's exit 4, the local API's 409), raised before anything was consumed."""

    def __init__(self, message: str) -> None:
        super().__init__("register", "development-unit", message)


class ConfigurationError(TillAgentError):
    """The configuration or a command-line argument is unusable."""


class PinRejected(ConfigurationError):
    """A token refused the configured PIN (wrong, locked, expired, of invalid form).

    It is permanent until the PIN is changed and the service restarted: logging in again
    with it would only count down the token's wrong tries, and a card or HSM locks its
    PIN after a few of them.
    """


class FiscalError(TillAgentError):
    """The register cannot issue receipts in its current state."""


class RegisterStateError(FiscalError):
    """The register is not in a state that allows this operation."""


class ConflictError(FiscalError):
    """A request conflicts with what the journal already holds."""


class WaitsForUnit(FiscalError):
    """A receipt that must be validly signed (Start-, Jahres-, Sammelbeleg) cannot be
    signed now; it waits for the unit and is issued when the unit is back."""


class SigningError(TillAgentError):
    """The signature unit did not produce a usable signature."""


class UnitUnavailable(SigningError):
    """The unit failed or missed its deadline; nothing is known to have been signed."""


class InvalidSignature(SigningError):
    """The unit returned a signature that does not verify against its public key."""


class OutcomeUnknown(SigningError):
    """The request reached (or may have reached) a chain service, but no answer came back.

    The service may hold a signed receipt that the agent does not know: the receipt is
    ``unsigned`` until the service is asked whether it has it.
    """


class BackupFailed(TillAgentError):
    """A quarterly DEP backup could not be written; nothing of it was recorded.

    Args:
        register_id: the register whose backup failed.
        quarter: the quarter it was for ("2026-Q3").
        reason: what failed, naming the path.
    """

    def __init__(self, register_id: str, quarter: str, reason: str) -> None:
        super().__init__(f"register {register_id}: the DEP backup of {quarter} failed: {reason}")
        self.register_id = register_id
        self.quarter = quarter
        self.reason = reason


class StorageError(TillAgentError):
    """The till database failed."""


class DataDirLocked(StorageError):
    """Another process holds the writer lock on this data directory."""


class RestorePending(StorageError):
    """A restore into this data directory did not finish (``restore.pending`` is there):
    the till database is not opened until the restore is run again to finish it, or
    ``restore --abandon`` puts the database it replaced back."""


class DatabaseMissing(StorageError):
    """The data directory has no till database, but files there show that a till lived in
    it: a new database would be a new register under the same Kassen-ID, its numbers
    starting again at 1. The database is restored, not created anew."""


class NotFound(TillAgentError):
    """The requested object does not exist."""


class NoDatabase(StorageError, NotFound):
    """The data directory holds no till database (nothing is damaged: it is not there)."""


class PrinterError(TillAgentError):
    """The printer did not take a job (unreachable, missing, timed out, refused).

    The receipt is durable before it is printed, so nothing is lost: the job is kept
    and retried with the same bytes (a reprint is a new copy, marked KOPIE).
    """
