"""Domain errors: the one hierarchy the library raises.

Every error is a `RecommenderError`. Its message says what is wrong, in words
that fit an API body as well as a terminal; `hint` says what a person at the
command line can do about it, and only the CLI shows it. The CLI and the API
each translate these once, into a one-line message or a 4xx response.
"""

from __future__ import annotations


class RecommenderError(Exception):
    """Base class: a problem the user can act on."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class InvalidArticle(RecommenderError):
    """An input record is not a valid article."""


class ArticleNotFound(RecommenderError):
    def __init__(self, article_id: str):
        super().__init__(f"no article with id {article_id!r}")
        self.article_id = article_id


class IndexMismatch(RecommenderError):
    """The index on disk was built with another model or dimension."""


class IndexDamaged(RecommenderError):
    """A file of an index version is missing, unreadable or fails its checksum."""


class NoIndex(RecommenderError):
    """Nothing has been ingested yet."""


class InvalidQuery(RecommenderError):
    """A request with contradictory or out-of-range options."""


class ModelError(RecommenderError):
    """A model string names no known model, or the model could not be loaded."""


class StoreError(RecommenderError):
    """The store cannot be opened: written by a newer version, or not a store."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; nothing was written, and a retry may succeed."""


class JobLocked(RecommenderError):
    """Another job holds the data directory's lock."""


class JobFailed(RecommenderError):
    """A re-embedding job stopped; the active version is untouched and a rerun resumes."""


class NoLabels(RecommenderError):
    """An evaluation dataset carries nothing to score against."""
