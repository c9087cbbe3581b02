"""Domain errors. The library raises these; the CLI and the API each translate
them once, into a one-line message or a 4xx response."""


class RecommenderError(Exception):
    """Base class: a problem the user can act on; the message says how."""


class InvalidArticle(RecommenderError):
    """An input record is not a valid article."""


class ArticleNotFound(RecommenderError):
    def __init__(self, article_id: str):
        super().__init__(f"no article with id {article_id!r}")
        self.article_id = article_id


class IndexMismatch(RecommenderError):
    """The index on disk was built with another model or dimension."""


class NoIndex(RecommenderError):
    """Nothing has been ingested yet."""


class InvalidQuery(RecommenderError):
    """A related-articles request with contradictory or out-of-range options."""


class JobLocked(RecommenderError):
    """Another job holds the data directory's lock."""
