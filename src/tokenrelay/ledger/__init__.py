"""Usage records: token estimation, batching, writing in fresh sessions."""

from tokenrelay.ledger.tokens import TokenCounter
from tokenrelay.ledger.writer import LedgerWriter

__all__ = ["LedgerWriter", "TokenCounter"]
