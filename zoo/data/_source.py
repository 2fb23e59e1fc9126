"""The questions zoo asks of a declared dataset, whatever its kind."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["DatasetSource"]


@runtime_checkable
class DatasetSource(Protocol):
    """A dataset as declared under ``datasets:``: a generator (zoo.data.GeneratorSpec),
    files (FileSpec), a mixture (MixSpec) or a streamed generator (StreamedSpec). Callers
    tell the kinds apart by these answers alone, never by class; each kind promises:

    - ``stored``: made before training and kept in the dataset cache (generator, files);
      False for a mixture (cut from its parts when a run loads it) and a streamed set.
    - ``streamed``: its own training samples are made while a run trains (a streamed
      generator); a mixture answers False, streamed or not through its parts
      (zoo.data._stream.mixed_stream).
    - ``parts()``: a mixture's component names, in its order (never empty); () otherwise.
    - ``files()``: the declared paths whose files' bytes enter its identity (a file
      dataset's path, read against the project root); () otherwise.
    - ``digest()``: its identity from the declaration alone (a generator's is its cache
      folder's name); None when it has no identity of its own before its files are read
      (files) or apart from its parts (a mixture).
    - ``pixel_size_a``: Å per pixel when the declaration says it; None otherwise (files
      without a declared size, a mixture: its parts').
    """

    @property
    def stored(self) -> bool: ...

    @property
    def streamed(self) -> bool: ...

    @property
    def pixel_size_a(self) -> float | None: ...

    def parts(self) -> tuple[str, ...]: ...

    def files(self) -> tuple[str, ...]: ...

    def digest(self) -> str | None: ...
