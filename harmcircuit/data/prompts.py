"""Prompt sets: examples with optional responses, deterministic splits and content hashes."""

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace


class DataError(ValueError):
    """A dataset file, package or prompt set is missing or malformed."""


@dataclass(frozen=True)
class Example:
    """One prompt, with the response a model gave or should give when known.

    ``id`` is stable across runs and unique within a prompt set; the train/test split and
    every cache key derive from it.
    """

    id: str
    prompt: str
    response: str | None = None
    category: str | None = None
    source: str = "custom"


def _split_fraction(example_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class PromptSet(Sequence[Example]):
    """An immutable, ordered collection of examples with unique ids."""

    def __init__(self, examples: Iterable[Example], name: str = "prompts") -> None:
        self.examples: tuple[Example, ...] = tuple(examples)
        self.name = name
        seen: set[str] = set()
        for example in self.examples:
            if example.id in seen:
                raise DataError(f"duplicate example id {example.id!r} in prompt set {name!r}")
            seen.add(example.id)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return PromptSet(self.examples[index], name=self.name)
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __repr__(self) -> str:
        return f"PromptSet(name={self.name!r}, size={len(self)}, categories={self.categories})"

    @property
    def prompts(self) -> list[str]:
        return [example.prompt for example in self.examples]

    @property
    def responses(self) -> list[str | None]:
        return [example.response for example in self.examples]

    @property
    def categories(self) -> list[str]:
        """Sorted distinct categories; examples without one are left out."""
        return sorted({e.category for e in self.examples if e.category is not None})

    def category_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for example in self.examples:
            label = example.category or "uncategorised"
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def filter(self, category: str | Iterable[str]) -> "PromptSet":
        """Keep the examples of one category or of any of several."""
        wanted = {category} if isinstance(category, str) else set(category)
        unknown = wanted - set(self.categories)
        if unknown:
            raise DataError(
                f"unknown categories {sorted(unknown)} in prompt set {self.name!r}; "
                f"available: {self.categories}"
            )
        return PromptSet((e for e in self.examples if e.category in wanted), name=self.name)

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple["PromptSet", "PromptSet"]:
        """Split into (train, test) by a hash of each id, so that membership is deterministic.

        The split is per example: adding or removing examples never moves the others.
        """
        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
        train = [e for e in self.examples if _split_fraction(e.id, seed) >= test_fraction]
        test = [e for e in self.examples if _split_fraction(e.id, seed) < test_fraction]
        return PromptSet(train, name=f"{self.name}/train"), PromptSet(
            test, name=f"{self.name}/test"
        )

    def stratified_split(
        self, test_fraction: float = 0.5, seed: int = 0, min_per_category: int = 2
    ) -> tuple["PromptSet", "PromptSet"]:
        """Split each category into (train, test) with exact proportions, by a hash of each id.

        Within a category, examples are ordered by the hash and the first
        ``round(test_fraction * n)`` go to test, with at least one example on each side.
        Raises DataError for a category with fewer than ``min_per_category`` examples.
        """
        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
        min_per_category = max(2, min_per_category)
        train_ids: set[str] = set()
        for category, count in self.category_counts().items():
            if count < min_per_category:
                raise DataError(
                    f"category {category!r} of {self.name!r} has {count} examples; at least "
                    f"{min_per_category} are needed to split it, so drop it or add examples"
                )
            members = [e for e in self.examples if (e.category or "uncategorised") == category]
            members.sort(key=lambda e: _split_fraction(e.id, seed))
            n_test = min(count - 1, max(1, round(test_fraction * count)))
            train_ids.update(e.id for e in members[n_test:])
        train = [e for e in self.examples if e.id in train_ids]
        test = [e for e in self.examples if e.id not in train_ids]
        return PromptSet(train, name=f"{self.name}/train"), PromptSet(
            test, name=f"{self.name}/test"
        )

    def cap_per_category(self, n: int, seed: int = 0) -> "PromptSet":
        """Keep at most ``n`` examples per category, chosen by a hash of the id (deterministic)."""
        kept: set[str] = set()
        for category in self.category_counts():
            members = [e for e in self.examples if (e.category or "uncategorised") == category]
            members.sort(key=lambda e: _split_fraction(e.id, seed + 1))
            kept.update(e.id for e in members[:n])
        return PromptSet((e for e in self.examples if e.id in kept), name=self.name)

    def take(self, n: int) -> "PromptSet":
        """Keep the first ``n`` examples."""
        return PromptSet(self.examples[:n], name=self.name)

    def with_responses(self, responses: Sequence[str]) -> "PromptSet":
        if len(responses) != len(self.examples):
            raise DataError(
                f"got {len(responses)} responses for {len(self.examples)} examples in {self.name!r}"
            )
        examples = (replace(e, response=r) for e, r in zip(self.examples, responses, strict=True))
        return PromptSet(examples, name=self.name)

    def content_hash(self) -> str:
        """Return a SHA-256 over every field of every example, in order."""
        payload = json.dumps([asdict(e) for e in self.examples], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_records(self) -> list[dict]:
        return [asdict(e) for e in self.examples]

    @classmethod
    def from_records(cls, records: Iterable[dict], name: str = "prompts") -> "PromptSet":
        return cls((Example(**record) for record in records), name=name)

    @classmethod
    def concat(cls, sets: Iterable["PromptSet"], name: str = "prompts") -> "PromptSet":
        return cls((e for s in sets for e in s), name=name)
