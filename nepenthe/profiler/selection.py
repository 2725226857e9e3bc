"""Which activation modules a profile tracks, and with which thresholds (the ``activations=`` argument)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import nn

from ..activations import activation_spec, register_activation, tracked_activation_types

Thresholds = Sequence[float] | Callable[[nn.Module], Sequence[float]]


class ActivationSelection:
    """The tracked activation classes and per-class threshold overrides.

    ``activations``: None (every registered activation), a sequence of classes or class names (only those,
    subclasses included), or a mapping ``class -> thresholds`` (every registered activation plus these; a class
    not yet registered is registered with :func:`nepenthe.register_activation`; thresholds ``None`` keep the
    registered ones).
    """

    def __init__(self, activations: object = None) -> None:
        self.only: tuple[type[nn.Module], ...] | None = None
        self.overrides: dict[type[nn.Module], Thresholds] = {}
        if activations is None:
            return
        if isinstance(activations, type):
            activations = [activations]
        if isinstance(activations, Mapping):
            self._extend(activations)
        elif isinstance(activations, (Sequence, set, frozenset)) and not isinstance(activations, str):
            self.only = tuple(cls for a in activations for cls in self._resolve(a))
            if not self.only:
                raise ValueError("activations is empty: pass None for every registered activation")
        else:
            raise TypeError(
                "activations must be None, a list of activation classes or names, or a mapping class -> thresholds; "
                f"got {type(activations).__name__}"
            )

    def _extend(self, mapping: Mapping) -> None:
        for cls, thresholds in mapping.items():
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise TypeError(f"activations keys must be nn.Module classes, got {cls!r}")
            if thresholds is None:
                if cls not in tracked_activation_types():
                    raise ValueError(f"activations: {cls.__name__} is not registered; give its thresholds")
                continue
            if cls not in tracked_activation_types():
                register_activation(cls, thresholds)
            self.overrides[cls] = thresholds

    @staticmethod
    def _resolve(item: object) -> tuple[type[nn.Module], ...]:
        """The classes ``item`` names: a class, or every known class of that name (torch's GELU and timm's)."""
        known = tracked_activation_types()
        if isinstance(item, str):
            named = tuple(c for c in known if c.__name__.lower() == item.lower())
            if not named:
                raise ValueError(
                    f"activations: unknown activation name {item!r}; known: {sorted({c.__name__ for c in known})}"
                )
            return named
        if isinstance(item, type) and issubclass(item, nn.Module):
            if not any(issubclass(item, c) for c in known):
                raise ValueError(
                    f"activations: {item.__name__} is not a registered activation; pass a mapping "
                    f"{{{item.__name__}: thresholds}} or call nepenthe.register_activation first"
                )
            return (item,)
        raise TypeError(f"activations items must be activation classes or names, got {item!r}")

    def is_tracked(self, module: nn.Module) -> bool:
        """True when ``module`` is an activation this selection tracks."""
        if activation_spec(module) is None:
            return False
        return self.only is None or isinstance(module, self.only)

    def tracks_class(self, cls: type[nn.Module]) -> bool:
        """True when modules of class ``cls`` would be tracked."""
        return self.only is None or issubclass(cls, self.only)

    def thresholds(self, module: nn.Module) -> tuple[float, ...]:
        """The thresholds of ``module``'s states (an override for its class, else its registered spec)."""
        for cls in type(module).__mro__:
            if cls in self.overrides:
                got = self.overrides[cls]
                return tuple(float(t) for t in (got(module) if callable(got) else got))
        spec = activation_spec(module)
        assert spec is not None
        return tuple(float(t) for t in spec.thresholds(module))
