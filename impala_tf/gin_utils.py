"""Gin helpers: Keras classes as configurables, and what the parsed config binds (these read
gin's state only, so any module may use them without importing the configurables).

`keras_configurable` makes a Keras layer or model class `@gin.configurable`. Plain
`gin.configurable` replaces `__init__` with a `(*args, **kwargs)` wrapper, and Keras'
`Operation.__new__` reads the positional argument names of `__init__` to record its config,
which then fails; restoring the original signature on the wrapper keeps both working.
Keras constructors also take `**kwargs`, which would let gin accept any parameter name; the
allowlist of named parameters makes a typo fail at parse time, naming the bad key.
"""

import inspect
import os

import gin


def keras_configurable(cls):
    """`gin.configurable` for a Keras class, keeping `__init__`'s signature visible."""
    original_signature = inspect.signature(cls.__init__)
    named = [
        name
        for name, p in original_signature.parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    cls = gin.configurable(cls, allowlist=named)
    cls.__init__.__signature__ = original_signature
    return cls


_UNBOUND = object()


def bound_value(binding: str, default=None):
    """The value the parsed config binds to `binding` ('Actor.num_envs'), else `default`."""
    try:
        return gin.query_parameter(binding)
    except ValueError:
        return default


def configured_value(configurable, parameter: str):
    """What the parsed config binds to `configurable`'s `parameter` (a gin-configurable class
    or function), else the parameter's default in its signature."""
    function = configurable.__init__ if inspect.isclass(configurable) else configurable
    default = inspect.signature(function).parameters[parameter].default
    return bound_value(f"{configurable.__name__}.{parameter}", default)


def is_bound(binding: str) -> bool:
    """Whether the parsed config binds `binding` at all (to None too)."""
    return bound_value(binding, _UNBOUND) is not _UNBOUND


def write_operative_config(logdir: str) -> str:
    """Writes the config actually used (after objects were built) to LOGDIR/operative_config.gin."""
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "operative_config.gin")
    with open(path, "w") as f:
        f.write(gin.operative_config_str())
    return path
