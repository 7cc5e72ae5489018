"""chaosnet's virtual-time simulator from Python.

``run(yaml)`` runs a scenario as ``chaosnet sim`` does (the protocol cores of every agent
over seeded NAT models; no lab, no root, no files written) and returns plain dicts and
lists: ``{"summary": {...}, "series": [...]}``. ``summary`` has the keys and values of
``chaosnet sim --json`` for the same scenario and seed, except ``wall_s``, ``speedup`` and
``peak_rss_bytes``, which describe this process. ``series`` has one dict per probe round
(``round``, ``t_s``, ``phase``, ``reachability``, ``alive``, ``converged``,
``active_faults``, and ``counts`` of what the agents did in that interval).

``series_frame(result)`` makes a pandas DataFrame of the series; pandas is optional and only
that function needs it.
"""

from __future__ import annotations

import json
from typing import Any

from . import _native

__all__ = ["DEFAULT_SCENARIO_YAML", "run", "series_frame"]

#: The embedded default scenario (``scenarios/default.yaml``: 3 seeds, every NAT type).
DEFAULT_SCENARIO_YAML: str = _native.DEFAULT_SCENARIO_YAML


def run(
    scenario_yaml: str,
    agents: int | None = None,
    duration_s: int | None = None,
    seed: int | None = None,
    *,
    file_name: str = "<scenario>",
) -> dict[str, Any]:
    """Simulate ``scenario_yaml`` (the text of a scenario file) in virtual time.

    ``agents``, ``duration_s`` and ``seed`` are ``chaosnet sim``'s ``--agents`` (site agents,
    seeds come on top), ``--duration-s`` (the fault phase, virtual seconds) and ``--seed``;
    ``None`` keeps the scenario's. ``file_name`` only labels error messages. The same seed
    gives the same run (``summary["digest"]``). The GIL is released while it simulates.

    Raises ``ValueError`` for a bad scenario (``<scenario>:line:col: message``) or option.
    """
    # JSON from Rust, parsed here: the dicts are exactly the CLI's JSON, with no hand-kept
    # mapping of Rust types to Python objects.
    return json.loads(_native.run_json(scenario_yaml, agents, duration_s, seed, file_name))


def series_frame(result: dict[str, Any] | list[dict[str, Any]]):
    """The series of ``run()``'s result (or the series list itself) as a pandas DataFrame,
    one row per probe round, indexed by ``round``; nested counts become dotted columns
    (``counts.lookups_ok``, ``counts.connects.direct``, ...).

    Raises ``ImportError`` when pandas is not installed (``run()`` never needs it).
    """
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "chaosnet_sim.series_frame needs pandas, which is not installed "
            "(pip install pandas); run() and its dicts work without it"
        ) from e
    series = result["series"] if isinstance(result, dict) else result
    if not series:
        return pd.DataFrame()
    return pd.json_normalize(series).set_index("round")
