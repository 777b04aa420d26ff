"""The gateway's tool policy chain for `/tools/invoke` and RPC `tools.invoke`, decided from config.

The gateway (openclaw 2026.9.6) answers "may this caller run tool X?" in two steps: it resolves the
session key and agent (refusing with 400 `invalid_request`), then filters the tools it built for
the HTTP surface through a chain of layers (404 `Tool not available: X`). Every step the config and
the request decide is taken here, in upstream order, so a mis-set gateway, or one without a layer,
still cannot run a tool the policy forbids. The sidecar only refuses or forwards: what depends on
the gateway's state (session rows, inherited policy, plugin availability, its migrated runtime
config) is left to the gateway, and the trace says so.

Deliberately stricter than the gateway:
- an `agent:<id>:...` session key naming an agent that is not in the roster gets no agent policy
  upstream (the agent layer is skipped, so that agent's deny list is bypassed); the sidecar refuses
  it with the gateway's own `Unknown agent id` 400 instead of copying the bypass;
- `gateway.tools.deny` entries match like every other deny list (globs, `group:*`, plugin ids),
  where upstream compares exact names for core tools (`sess*` would not hide `sessions_list`);
- the look-alike names `sidecar.toolpolicy` refuses stay refused.

Pure: no proxy types; `ToolChain.decide` is called per request, its rule lists compile once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache, partial
from importlib import resources
from typing import Any, Literal, NamedTuple

from .body import InvokeBody
from .caching import short_call_cache, text_length
from .config import OpenClawRules
from .envelopes import Envelope
from .reasons import Reason, answer
from .toolpolicy import ToolGate, ToolName, js_trim, normalize_policy_name

CATALOGUE_VERSION = "2026.9.6"
DECISIONS_KEPT = 4096
# Session keys, agent ids and tool names come from strangers: only calls whose text totals this
# much are cached, so a flood of distinct megabyte-long keys neither fills memory nor evicts.
CACHEABLE_LENGTH = 512
HARNESS_NOTE = "the gateway refuses harness keys unless its session store holds an unlocked row"

Verdict = Literal["allow", "deny", "skip", "n/a", "gateway"]


# ---- the catalogue (data, loaded once) -------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """sidecar/data/tool-catalogue-<version>.json, shaped for lookups."""

    version: str
    core_ids: frozenset[str]
    profiles: Mapping[str, tuple[str, ...]]
    groups: Mapping[str, tuple[str, ...]]
    renames: Mapping[str, tuple[str, ...]]  # shipped policy-name expansions (`update_plan`, `canvas`)
    plugin_of: Mapping[str, str]  # bundled plugin tool -> plugin id
    subagent_deny_always: tuple[str, ...]
    subagent_deny_leaf: tuple[str, ...]
    sandbox_allow: tuple[str, ...]
    sandbox_deny: tuple[str, ...]
    provider_filters: Mapping[str, Mapping[str, Any]]
    channel_aliases: Mapping[str, str]
    surface: Mapping[str, Any]

    @cached_property
    def plugin_tools(self) -> Mapping[str, tuple[str, ...]]:
        by_plugin: dict[str, list[str]] = {}
        for tool, plugin in self.plugin_of.items():
            by_plugin.setdefault(plugin, []).append(tool)
        return {plugin: tuple(tools) for plugin, tools in by_plugin.items()}

    def is_plugin_tool(self, name: str) -> bool:
        """Bundled plugin tools, and any name that is no core tool (only a plugin or node can have it)."""
        return name in self.plugin_of or name not in self.core_ids


@cache
def catalogue(version: str = CATALOGUE_VERSION) -> Catalogue:
    data = json.loads(resources.files("sidecar").joinpath(f"data/tool-catalogue-{version}.json").read_text(encoding="utf-8"))
    tuples = lambda mapping: {k: tuple(v) for k, v in mapping.items()}  # noqa: E731
    sandbox = data["sandboxDefaults"]
    return Catalogue(
        version=data["gatewayVersion"], core_ids=frozenset(data["coreToolIds"]), profiles=tuples(data["profiles"]),
        groups=tuples(data["groups"]), renames=tuples(data["shippedPolicyNameExpansions"]), plugin_of=data["pluginTools"],
        subagent_deny_always=tuple(data["subagentDeny"]["always"]), subagent_deny_leaf=tuple(data["subagentDeny"]["leaf"]),
        sandbox_allow=tuple(sandbox["allow"]), sandbox_deny=tuple(sandbox["deny"]),
        provider_filters=data["messageProviderFilters"], channel_aliases=data["channelAliases"], surface=data["httpSurface"],
    )


# ---- JavaScript's view of raw config values ---------------------------------------------------------


def _trim(value: Any) -> str:
    """normalizeOptionalString: a non-string is nothing."""
    return js_trim(value) if isinstance(value, str) else ""


def _lower(value: Any) -> str:
    return _trim(value).lower()


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any] | None:
    """`Array.isArray(value) ? value : undefined`."""
    return value if isinstance(value, list) else None


def _js_keys(mapping: Mapping[str, Any]) -> list[str]:
    """Object.keys order: integer-like keys ascending first, then the rest as written."""
    index = [k for k in mapping if k.isascii() and k.isdigit() and (k == "0" or k[0] != "0") and int(k) < 2**32 - 1]
    return sorted(index, key=int) + [k for k in mapping if k not in index]


def _truthy(value: Any) -> bool:
    """JavaScript truthiness (an empty object or array is true)."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, (int, float)):
        return value == value and value != 0
    return value != ""


def _unique(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


# ---- agent ids and session keys (session-key.ts, agent-id.ts) ----------------------------------------

_VALID_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.IGNORECASE | re.ASCII)
_INVALID_ID_CHARS = re.compile(r"[^a-z0-9_-]+")
_SIGNAL_GROUP = re.compile(r"(^|:)signal:group:([^:]+)", re.IGNORECASE | re.ASCII)
_MATRIX_ROOM = re.compile(r"^(?:(?:agent:[^:]*:)+:*)?matrix:(?:channel|group):", re.IGNORECASE | re.ASCII)
_SUBAGENT_MARK = re.compile(r"(^|:)subagent:")
# re.ASCII as JavaScript's /i without /u: Python's IGNORECASE alone reads `topıc` and `ſender` as
# the markers, and would pick a group the gateway does not (red team).
_TOPIC_SENDER = re.compile(r"^(.+):topic:([^:]+):sender:([^:]+)$", re.IGNORECASE | re.ASCII)
_TOPIC = re.compile(r"^(.+):topic:([^:]+)$", re.IGNORECASE | re.ASCII)
_SENDER = re.compile(r"^(.+):sender:([^:]+)$", re.IGNORECASE | re.ASCII)


def _canonical_id(trimmed: str) -> str:
    """An agent or account id as the gateway canonicalises one: lower-cased, and when it is no
    valid id, each run of other characters a `-`, outer dashes dropped, 64 characters kept."""
    lowered = trimmed.lower()
    return lowered if _VALID_ID.fullmatch(trimmed) else _INVALID_ID_CHARS.sub("-", lowered).strip("-")[:64]


def agent_id_strict(value: Any) -> str | None:
    """normalizeAgentIdStrict: the canonical id, or None when nothing of it is representable."""
    return _canonical_id(_trim(value)) or None


def agent_id(value: Any) -> str:
    return agent_id_strict(value) or "main"


@short_call_cache(CACHEABLE_LENGTH, 4096)
def normalize_session_key(raw: str) -> str:
    """Lower-cased, except the opaque ids (Signal group ids, Matrix room tails) that keep their case."""
    raw = js_trim(raw)
    folded = raw.lower()
    if "signal:" not in folded and "matrix:" not in folded:
        return folded
    spans = [(m.end() - len(m.group(2)), m.end(), True) for m in _SIGNAL_GROUP.finditer(raw)]
    room = _MATRIX_ROOM.match(raw)
    if room and room.end() < len(raw):
        start = room.end()
        # Found in the trimmed tail and applied to the untrimmed one, as the gateway does: leading
        # blanks shift which letters keep their case.
        marker = _lower(raw[start:]).rfind(":thread:")
        if marker == -1:
            spans.append((start, len(raw), False))
        else:
            spans.append((start, start + marker, False))
            spans.append((start + marker + 8, len(raw), False))
    out, cursor = "", 0
    for start, end, trim in sorted(s for s in spans if s[1] > s[0]):
        if start < cursor:
            continue
        out += _lower(raw[cursor:start]) + (js_trim(raw[start:end]) if trim else raw[start:end])
        cursor = end
    return out + _lower(raw[cursor:])


@dataclass(frozen=True)
class AgentKey:
    agent: str  # as written (lower-cased, trimmed)
    rest: str


@short_call_cache(CACHEABLE_LENGTH, 4096)
def parse_agent_key(key: str) -> AgentKey | None:
    """parseAgentSessionKey: `agent:<id>:<rest>`, with a non-blank id and a rest not starting ':'."""
    normalized = normalize_session_key(key)
    if not normalized.startswith("agent:"):
        return None
    end = normalized.find(":", 6)
    if end == -1:
        return None
    agent, rest = js_trim(normalized[6:end]), normalized[end + 1:]
    return AgentKey(agent, rest) if agent and rest and not rest.startswith(":") else None


def _rest(key: str) -> str:
    parsed = parse_agent_key(key)
    return parsed.rest.lower() if parsed else _lower(key)


def is_subagent_key(key: str) -> bool:
    return _lower(key).startswith("subagent:") or (parse_agent_key(key) is not None and _rest(key).startswith("subagent:"))


def is_acp_key(key: str) -> bool:
    return _lower(key).startswith("acp:") or (parse_agent_key(key) is not None and _rest(key).startswith("acp:"))


def is_cron_key(key: str) -> bool:
    return parse_agent_key(key) is not None and _rest(key).startswith("cron:")


def is_harness_key(key: str) -> bool:
    return _rest(key).startswith("harness:")


# ---- the roster and the session (session-request-agent.ts, session-store-key.ts) ----------------


@dataclass(frozen=True)
class Roster:
    """`agents.entries` (keyed) or `agents.list`: each entry with its canonical id and config path."""

    present: bool
    entries: tuple[tuple[str, str, Mapping[str, Any]], ...]  # (id, path, entry)

    @classmethod
    def of(cls, agents: Mapping[str, Any]) -> "Roster":
        if agents.get("entries") is not None:
            keyed = _dict(agents["entries"])
            return cls(True, tuple((agent_id(k), f"agents.entries.{k}", keyed[k]) for k in _js_keys(keyed)
                                   if isinstance(keyed[k], dict)))
        if agents.get("list") is not None:
            listed = _list(agents["list"]) or []
            return cls(True, tuple((agent_id(e.get("id")), f"agents.list[{i}]", e) for i, e in enumerate(listed)
                                   if isinstance(e, dict)))
        return cls(False, ())

    @cached_property
    def ids(self) -> tuple[str, ...]:
        """listAgentIds: `main` alone when there is no roster at all."""
        if not self.entries and not self.present:
            return ("main",)
        return _unique(agent for agent, _, _ in self.entries)

    def entry(self, agent: str) -> tuple[str, Mapping[str, Any]] | None:
        return next(((path, entry) for a, path, entry in self.entries if a == agent), None)

    def sole(self) -> str | None:
        """tryResolveSoleAgentId."""
        if not self.entries:
            return None if self.present else "main"
        return self.entries[0][0] if len(self.entries) == 1 else None


@dataclass(frozen=True)
class Session:
    agent: str  # the agent whose policy applies
    key: str  # the canonical (stored) key the policy layers read
    unlisted: str | None = None  # an agent-prefixed key's agent (as written) that the roster lacks


class SessionError(ValueError):
    """The gateway's 400 `invalid_request`, with its message."""


# ---- tool policy lists and their matching (tool-policy-match.ts, glob-pattern.ts) -------------------

_ALL = ("all",)
_PLUGINS = ("plugins",)
Atom = tuple[Any, ...]


@cache
def _atoms(entry: str) -> tuple[Atom, ...]:
    """What one configured entry matches: normalised, shipped renames, plugin ids and `group:*`
    expanded, `*` anchored at both ends and every other character literal."""
    cat = catalogue()
    normalized = normalize_policy_name(entry)
    atoms: list[Atom] = []
    for name in cat.renames.get(normalized, (normalized,)) if normalized else ():
        if name == "group:plugins":
            atoms.append(_PLUGINS)
        elif name in cat.plugin_tools or name in cat.groups:
            atoms += [("exact", tool) for tool in cat.plugin_tools.get(name) or cat.groups[name]]
        elif name == "*":
            atoms.append(_ALL)
        elif "*" in name:
            atoms.append(("glob", re.compile("^" + re.escape(name).replace(r"\*", ".*") + "$", re.DOTALL)))
        else:
            atoms.append(("exact", name))
    return tuple(atoms)


def _matches(atom: Atom, name: str) -> bool:
    kind = atom[0]
    if kind == "all":
        return True
    if kind == "plugins":
        return catalogue().is_plugin_tool(name)
    if kind == "glob":
        return atom[1].match(name) is not None
    return bool(atom[1] == name)


@dataclass(frozen=True)
class _Compiled:
    """A list compiled once: for each kind of pattern, the position of the first entry holding it."""

    entries: tuple[str, ...]
    exact: Mapping[str, int]
    everything: int | None
    plugins: int | None
    globs: tuple[tuple[int, re.Pattern[str]], ...]

    @property
    def empty(self) -> bool:
        """Blank entries are dropped: an allow list of blanks allows everything."""
        return not self.exact and self.everything is None and self.plugins is None and not self.globs

    def first(self, name: str) -> str | None:
        hits = [self.exact.get(name), self.everything,
                self.plugins if catalogue().is_plugin_tool(name) else None,
                next((i for i, pattern in self.globs if pattern.match(name)), None)]
        found = [i for i in hits if i is not None]
        return self.entries[min(found)] if found else None


@lru_cache(maxsize=4096)
def _compile(entries: tuple[str, ...]) -> _Compiled:
    exact: dict[str, int] = {}
    everything = plugins = None
    globs: list[tuple[int, re.Pattern[str]]] = []
    for i, entry in enumerate(entries):
        for atom in _atoms(entry):
            if atom[0] == "exact":
                exact.setdefault(atom[1], i)
            elif atom[0] == "glob":
                globs.append((i, atom[1]))
            elif atom is _ALL and everything is None:
                everything = i
            elif atom is _PLUGINS and plugins is None:
                plugins = i
    return _Compiled(entries, exact, everything, plugins, tuple(globs))


def _compiled(entries: Iterable[Any]) -> _Compiled:
    return _compile(tuple(e for e in entries if isinstance(e, str)))


def first_match(entries: Iterable[Any], name: str) -> str | None:
    """The first entry (as written) that matches the tool name."""
    return _compiled(entries).first(name)


@dataclass(frozen=True)
class Policy:
    """One layer's allow/deny lists (allow None: no allow list), and where they came from."""

    source: str
    allow: tuple[Any, ...] | None
    deny: tuple[Any, ...] = ()
    requested_passes: bool = False  # the profile: upstream adds the requested non-core name to it

    @cached_property
    def _allow(self) -> _Compiled | None:
        return None if self.allow is None else _compiled(self.allow)

    @cached_property
    def _deny(self) -> _Compiled:
        return _compiled(self.deny)

    def judge(self, name: str) -> tuple[bool, str]:
        """Deny first; an empty or absent allow list allows the rest; `write` allows apply_patch."""
        if (hit := self._deny.first(name)) is not None:
            return False, f"{self.source}: deny {hit!r}"
        if self._allow is None or self._allow.empty:
            return True, f"{self.source}: {'no allow list' if self.allow is None else 'empty allow list'}, not denied"
        if (hit := self._allow.first(name)) is not None:
            return True, f"{self.source}: allow {hit!r}"
        if self.requested_passes and name not in catalogue().core_ids:
            return True, f"{self.source}: the requested name, no core tool, is added to it"
        if name == "apply_patch" and (hit := self._allow.first("write")) is not None:
            return True, f"{self.source}: allow {hit!r} (write covers apply_patch)"
        return False, f"{self.source}: not in the allow list"


def pick_policy(source: str, config: Any) -> Policy | None:
    """pickSandboxToolPolicy: allow ∪ alsoAllow; alsoAllow alone (or with `allow: []`) means '*' too."""
    config = _dict(config)
    allow, also, deny = _list(config.get("allow")), _list(config.get("alsoAllow")), _list(config.get("deny"))
    if also and (allow is None or not allow):
        allow, source = list(_unique(["*", *also])), f"{source} (alsoAllow without allow restricts nothing)"
    elif also and allow is not None:
        allow = list(_unique([*allow, *also]))
    if allow is None and deny is None:
        return None
    return Policy(source, None if allow is None else tuple(allow), tuple(deny or ()))


# ---- the request and the answer ---------------------------------------------------------------------


@dataclass(frozen=True)
class ToolRequest:
    """One tool call as the gateway will read it: body fields, the context headers it receives."""

    invoke: InvokeBody
    owner: bool
    channel: str | None = None  # x-openclaw-message-channel as forwarded (HTTP only)
    account: str | None = None  # x-openclaw-account-id as forwarded (HTTP only)
    client_caps: frozenset[str] = frozenset()  # an RPC connection's connect caps; HTTP has none


class Step(NamedTuple):
    """What one layer said (a tuple: eleven of these are made per request)."""

    layer: str
    verdict: Verdict
    rule: str


def detail_of(steps: Iterable[Step]) -> str | None:
    """The short reason for the audit line: the first refusing layer and what it said."""
    step = next((s for s in steps if s.verdict == "deny"), None)
    return None if step is None else f"{step.layer}: {step.rule}"[:256]


@dataclass(frozen=True)
class ToolDecision:
    """Refused (status and the gateway's message) or forwarded, with the layer-by-layer trace."""

    name: str  # as the gateway spells it (trimmed; `cron` is `automations`)
    status: int | None = None  # 400, 404, or None: forward
    message: str | None = None
    steps: tuple[Step, ...] = ()
    session: Session | None = None

    @property
    def refused(self) -> bool:
        return self.status is not None

    @property
    def reason(self) -> Reason:
        """The metric label: a small fixed set."""
        return _DECISION_REASONS[self.status]

    @property
    def detail(self) -> str | None:
        return detail_of(self.steps)

    @property
    def answer_data(self) -> str:
        """What the refusal's answer names: the gateway's message (400) or the tool (404)."""
        assert self.message is not None
        return self.message if self.status == 400 else self.name

    def envelope(self) -> Envelope:
        return answer(self.reason, self.answer_data)


_DECISION_REASONS: dict[int | None, Reason] = {None: Reason.ALLOWED, 400: Reason.SESSION_INVALID, 404: Reason.TOOL_DENIED}


# ---- the chain ----------------------------------------------------------------------------------------

_SKIP_NOTES = {
    "profile": "no tools.profile (or an unknown one)",
    "tools": "no tools.allow / tools.alsoAllow / tools.deny",
    "group": "the session key names no configured channel group",
    "sandbox": "the session is not sandboxed by config",
    "subagent": "not a subagent session key",
}


@dataclass(frozen=True)
class ToolChain:
    rules: OpenClawRules
    # Policies come from config alone: each is built once, keyed by the config node it reads.
    _policies: dict[tuple[Any, ...], Policy | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    # Decisions repeat (the same callers call the same tools in the same sessions): the last few
    # thousand with short enough text are kept, so a steady stream costs a dict lookup, not ~80 µs.
    _decisions: dict[tuple[Any, ...], ToolDecision] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _once(self, key: tuple[Any, ...], build: Callable[[], Policy | None]) -> Policy | None:
        if key not in self._policies:
            self._policies[key] = build()
        return self._policies[key]

    def decide(self, request: ToolRequest) -> ToolDecision:
        invoke = request.invoke
        # Everything the decision reads; a non-string session field counts as absent, as upstream.
        key = (invoke.spelled, _trim(invoke.session_key), _trim(invoke.agent_id), request.channel, request.account,
               request.owner, request.client_caps)
        if text_length(key) + text_length(request.client_caps) > CACHEABLE_LENGTH:
            return self._decide(request)
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= DECISIONS_KEPT:
                self._decisions.clear()
            decision = self._decisions[key] = self._decide(request)
        return decision

    @cached_property
    def gate(self) -> ToolGate:
        tools = self.rules.gateway.tools
        return ToolGate.from_config(tools.allow, tools.deny)

    @cached_property
    def roster(self) -> Roster:
        return Roster.of(self.rules.agents)

    @cached_property
    def main_key(self) -> str:
        return _lower(self.rules.session.get("mainKey")) or "main"

    @cached_property
    def global_scope(self) -> bool:
        return self.rules.session.get("scope") == "global"

    def _decide(self, request: ToolRequest) -> ToolDecision:
        invoke = request.invoke
        name = "automations" if invoke.spelled == "cron" else invoke.spelled
        try:
            session = self.resolve_session(invoke.session_key, invoke.agent_id)
        except SessionError as exc:
            return ToolDecision(name, 400, str(exc), (Step("session", "deny", str(exc)),))
        where = f"agent {session.agent!r}, key {session.key!r}"
        if session.unlisted is not None:
            # The sidecar's own rule (module docstring): upstream would run it without agent policy.
            message = f'Unknown agent id "{session.unlisted}"'
            rule = f"{message}: the key names an agent outside the roster (the gateway would skip its agent policy)"
            return ToolDecision(name, 400, message, (Step("session", "deny", rule),), session)
        requested = _trim(invoke.agent_id)
        if requested and requested != session.agent:
            message = f'agent id "{requested}" does not match session agent "{session.agent}"'
            return ToolDecision(name, 400, message, (Step("session", "deny", message),), session)
        harness = is_harness_key(session.key)
        steps = [Step("session", "gateway" if harness else "allow", f"{where} ({HARNESS_NOTE})" if harness else where)]
        steps += self._layers(request, name, session)
        denied = any(s.verdict == "deny" for s in steps)
        return ToolDecision(name, 404 if denied else None, f"Tool not available: {name}" if denied else None,
                            tuple(steps), session)

    # ---- session and agent (§1) ----

    def resolve_session(self, raw_key: Any, raw_agent: Any) -> Session:
        key = _trim(raw_key) or "main"
        requested_raw = _trim(raw_agent) or None
        parsed = parse_agent_key(key)
        if parsed is None and key.lower().startswith("agent:"):
            raise SessionError(f'malformed session key "{key}"')
        requested = None
        if requested_raw is not None:
            requested = agent_id_strict(requested_raw)
            if requested is None or requested not in self.roster.ids:
                raise SessionError(f'Unknown agent id "{requested_raw}"')
        owner_key = key
        if parsed is not None:
            key_agent = agent_id(parsed.agent)
            global_alias = self.global_scope and parsed.rest in ("main", self.main_key)
            if global_alias and key_agent not in self.roster.ids:
                raise SessionError(f'Unknown agent id "{parsed.agent}"')
            if requested is not None and key_agent != requested:
                raise SessionError(f'agent "{requested_raw}" does not match session key agent "{key_agent}"')
            if not global_alias or requested is None:
                unlisted = None if key_agent in self.roster.ids else parsed.agent
                return Session(key_agent, self._stored_key(key_agent, key), unlisted)
            owner_key = "global"
        owner = self._store_owner(owner_key)
        if owner is not None and owner[0] == "retired":
            raise SessionError(f'session key belongs to retired agent "{owner[1]}"')
        if requested is not None:
            if owner is not None and owner[1] != requested:
                raise SessionError(f'agent "{requested_raw}" does not match session key agent "{owner[1]}"')
            return Session(requested, self._stored_key(requested, key))
        inferred = self._inferred_agent(key)
        if inferred is None:
            raise SessionError(f'Multiple agents are configured, but session key "{key}" has no explicit owner. '
                               "Pass agentId or use an agent-prefixed session key.")
        return Session(inferred, self._stored_key(inferred, key))

    def _store_owner(self, key: str) -> tuple[str, str] | None:
        """A fixed `session.store` with `agents.defaults.sessionStore.agentId` owns unprefixed keys."""
        if key.lower().startswith("agent:"):
            return None
        store = self.rules.session.get("store")
        if not isinstance(store, str) or not js_trim(store) or "{agentId}" in store:
            return None
        recorded = _trim(_dict(_dict(_dict(self.rules.agents.get("defaults")).get("sessionStore"))).get("agentId"))
        if not recorded:
            return None
        owner = agent_id(recorded)
        return ("configured" if owner in self.roster.ids else "retired", owner)

    def _inferred_agent(self, key: str) -> str | None:
        """The store owner, else `systemAgent` (explicit ownership) or the one `default: true`
        entry, else the sole agent. The first entry is never the default on 2026.9.6."""
        owner = self._store_owner(key)
        if owner is not None:
            return owner[1] if owner[0] == "configured" else None
        agents = self.rules.agents
        if agents.get("ownership") == "explicit":
            system = _trim(_dict(_dict(agents.get("defaults")).get("systemAgent")).get("agentId"))
            legacy = agent_id(system) if system and agent_id(system) in self.roster.ids else None
        else:
            marked = [agent for agent, _, entry in self.roster.entries if entry.get("default") is True]
            legacy = marked[0] if len(marked) == 1 else None
        return legacy or self.roster.sole()

    def _stored_key(self, agent: str, key: str) -> str:
        """resolveStoredSessionKeyForAgentStore: the key the gateway's policy layers read."""
        lowered = key.lower()
        if lowered in ("global", "unknown"):
            return lowered
        if parse_agent_key(key) is not None:
            return self._main_alias(agent, normalize_session_key(key))
        owner = self._store_owner(key)
        if owner == ("configured", agent) and lowered not in ("main", self.main_key):
            return key
        return self._main_alias(agent, f"agent:{agent}:{normalize_session_key(key)}")

    def _main_alias(self, agent: str, key: str) -> str:
        """canonicalizeMainSessionAlias: any spelling of the agent's main session is one key."""
        main = self.main_key
        aliases = {"main", main, f"agent:{agent}:{main}", f"agent:{agent}:main", f"agent:main:{main}", "agent:main:main"}
        if key not in aliases:
            return key
        return "global" if self.global_scope else f"agent:{agent}:{main}"

    def _main_session(self, agent: str) -> str:
        return "global" if self.global_scope else f"agent:{agent}:{self.main_key}"

    # ---- the layers (§2, §3) ----

    def _layers(self, request: ToolRequest, name: str, session: Session) -> list[Step]:
        tool = request.invoke.tool
        agent_path, agent_tools = self._agent_tools(session.agent)
        sandboxed = self._sandboxed(session)
        steps = [self._lookup(name, tool), self._surface(request, tool.name, session, sandboxed),
                 self._message_provider(request.channel, tool.name)]
        agent = session.agent
        policies = {
            "profile": self._once(("profile", agent), lambda: self._profile(agent_tools, agent_path)),
            "tools": self._once(("tools",), lambda: pick_policy("tools", self.rules.tools)),
            "agent": self._once(("agent", agent), lambda: pick_policy(f"{agent_path}.tools", agent_tools)),
            "group": self._group(session.key, request.account),
            "sandbox": self._once(("sandbox", agent), lambda: self._sandbox(agent)) if sandboxed else None,
            "subagent": self._subagent(session.key),
        }
        for layer, policy in policies.items():
            if policy is None:
                steps.append(Step(layer, "skip", self._skip_note(layer, session, agent_path)))
            else:
                allowed, rule = policy.judge(tool.name)
                steps.append(Step(layer, "allow" if allowed else "deny", rule))
            if layer == "tools" and self._configured("byProvider", agent_tools):
                steps.append(Step("byProvider", "n/a", "tools.byProvider never applies on HTTP (no model provider)"))
            if layer == "group" and self._configured("toolsBySender", agent_tools):
                steps.append(Step("toolsBySender", "n/a", "sender policy never applies on HTTP (no sender id)"))
        if is_subagent_key(session.key) or is_acp_key(session.key):
            steps.append(Step("inherited", "gateway", "inherited tool policy lives in the gateway's session store"))
        steps.append(self._gateway(tool, request.owner))
        return steps

    def _configured(self, key: str, agent_tools: Mapping[str, Any] | None) -> bool:
        return key in self.rules.tools or key in _dict(agent_tools)

    def _skip_note(self, layer: str, session: Session, agent_path: str) -> str:
        if layer == "agent":
            return f"{agent_path} has no tools policy" if agent_path else f"agent {session.agent!r} has no roster entry"
        return _SKIP_NOTES[layer]

    def _lookup(self, name: str, tool: ToolName) -> Step:
        if name != tool.name:
            return Step("lookup", "deny", f"the gateway looks names up exactly: no tool is spelled {name!r}")
        return Step("lookup", "allow", f"{name!r} is the tool's own spelling")

    def _surface(self, request: ToolRequest, name: str, session: Session, sandboxed: bool) -> Step:
        """What resolveGatewayScopedTools builds for surface 'http' at all (§2)."""
        cat, surface = catalogue(), catalogue().surface

        def deny(rule: str) -> Step:
            return Step("http-surface", "deny", rule)

        if name in surface["neverBuilt"]:
            return deny(f"never built on HTTP: {surface['neverBuilt'][name]}")
        if name in surface["needClientCap"]:
            cap = surface["needClientCap"][name]
            if cap not in request.client_caps:
                return deny(f"needs client capability {cap!r}, which the request does not carry")
            return Step("http-surface", "gateway", f"built for client capability {cap!r}")
        if name in surface["notWhenSandboxed"] and sandboxed:
            return deny("not built for sandboxed sessions")
        if name == "openclaw" and session.agent == "openclaw":
            return deny("not built for the agent named 'openclaw'")
        if name in surface["notForSubagentOrAcpKeys"] and (is_subagent_key(session.key) or is_acp_key(session.key)):
            return deny("not built for subagent: or acp: sessions")
        if name in surface["notForCronKeys"] and is_cron_key(session.key):
            return deny("removed for cron: sessions")
        if switch := surface["switchedOffBy"].get(name):
            node: Any = {"tools": self.rules.tools}
            for part in switch.split("."):
                node = _dict(node).get(part)
            if node is False:
                return deny(f"{switch} is false")
        if why := surface["runtimeDependent"].get(name):
            return Step("http-surface", "gateway", f"built only with {why}")
        if name in cat.plugin_of:
            return Step("http-surface", "gateway", f"tool of plugin {cat.plugin_of[name]!r}: its availability is the gateway's")
        if name not in cat.core_ids:
            return Step("http-surface", "gateway", "not a core tool: a plugin or a node may provide it")
        return Step("http-surface", "allow", "core tool built on HTTP")

    def _message_provider(self, channel: str | None, name: str) -> Step:
        provider = _lower(channel)
        rule = catalogue().provider_filters.get(provider)
        if rule is None:
            return Step("message-provider", "skip", f"no filter for channel {provider!r}" if provider else "no message channel")
        if rule["mode"] == "allowOnly":
            kept = name in rule["allow"]
            return Step("message-provider", "allow" if kept else "deny",
                        f"channel {provider!r} keeps only {', '.join(rule['allow'])}")
        dropped = name in rule["deny"]
        return Step("message-provider", "deny" if dropped else "allow", f"channel {provider!r} drops {', '.join(rule['deny'])}")

    def _agent_tools(self, agent: str) -> tuple[str, Mapping[str, Any] | None]:
        """The agent's roster entry `.tools`; `agents.defaults.tools` only when there is no roster."""
        if not self.roster.present:
            defaults = _dict(self.rules.agents.get("defaults")).get("tools")
            return "agents.defaults", defaults if isinstance(defaults, dict) else None
        found = self.roster.entry(agent)
        if found is None:
            return "", None
        tools = found[1].get("tools")
        return found[0], tools if isinstance(tools, dict) else None

    def _profile(self, agent_tools: Mapping[str, Any] | None, agent_path: str) -> Policy | None:
        """The profile (the agent's wins), plus alsoAllow (the agent's list replaces the global one),
        plus the requested name when it is no core tool: plugin tools pass the profile as upstream."""
        own = _dict(agent_tools)
        profile = own.get("profile") if own.get("profile") is not None else self.rules.tools.get("profile")
        base = catalogue().profiles.get(profile) if isinstance(profile, str) else None
        if base is None:
            return None
        also = _list(own.get("alsoAllow"))
        also_path = f"{agent_path}.tools.alsoAllow"
        if also is None:
            also, also_path = _list(self.rules.tools.get("alsoAllow")), "tools.alsoAllow"
        source = f"profile {profile!r}" + (f" + {also_path}" if also else "")
        return Policy(source, _unique([*base, *(also or ())]), requested_passes=True)

    def _group(self, key: str, account: str | None) -> Policy | None:
        """channels.<channel>[.accounts.<id>].groups, selected by the session key alone (§3.7)."""
        context = _group_context(key)
        if context is None:
            return None
        channel, candidates = context
        channel = catalogue().channel_aliases.get(channel, channel)
        groups, path = self._channel_groups(channel, _account_id(account))
        if groups is None:
            return None
        selected = next((c for c in candidates if _truthy(groups.get(c))), None)
        for node_key in ([selected] if selected is not None else []) + ["*"]:
            node = _dict(groups.get(node_key))
            senders = _dict(node.get("toolsBySender"))
            # With no sender on HTTP only the "*" key of toolsBySender can match; it beats `tools`.
            wildcard = next((senders[k] for k in reversed(list(senders)) if js_trim(k) == "*" and _truthy(senders[k])), None)
            where, value = (f"{path}[{node_key!r}].toolsBySender['*']", wildcard) if wildcard is not None else \
                (f"{path}[{node_key!r}].tools", node.get("tools"))
            if _truthy(value):
                return self._once(("group", where), partial(pick_policy, where, value))
        return None

    def _channel_groups(self, channel: str, account: str) -> tuple[Mapping[str, Any] | None, str]:
        """resolveChannelGroups: an account's `groups` replaces the channel's (an empty one inherits
        when at most one account exists)."""
        config = self.rules.channels.get(channel)
        if not isinstance(config, dict):
            return None, ""
        groups, path = config.get("groups"), f"channels.{channel}.groups"
        accounts = _dict(config.get("accounts"))
        found = _account_key(accounts, account)
        if found is not None and isinstance(accounts[found], dict) and "groups" in accounts[found]:
            own = accounts[found]["groups"]
            if not (isinstance(own, dict) and not own and len(accounts) <= 1):
                groups, path = own, f"channels.{channel}.accounts.{found}.groups"
        return (groups if isinstance(groups, dict) else None), path

    def _sandboxed(self, session: Session) -> bool:
        """By config: mode `all`, or any mode but `off` for a session other than the agent's main
        one (session-store flags can sandbox more; the gateway applies those)."""
        found = self.roster.entry(session.agent)
        mode = _dict(_dict(found[1] if found else None).get("sandbox")).get("mode")
        if mode is None:
            mode = _dict(_dict(self.rules.agents.get("defaults")).get("sandbox")).get("mode")
        if mode is None or mode == "off":
            return False
        return mode == "all" or self._main_alias(session.agent, session.key) != self._main_session(session.agent)

    def _sandbox(self, agent: str) -> Policy:
        """resolveSandboxToolPolicyForAgent: each list from the agent's tools.sandbox.tools if it is
        an array, else the global one; defaults fill in, minus what an explicit allow re-allows."""
        found = self.roster.entry(agent)
        own = _dict(_dict(_dict(_dict(found[1] if found else None).get("tools")).get("sandbox")).get("tools"))
        glob = _dict(_dict(self.rules.tools.get("sandbox")).get("tools"))

        def pick(field: str) -> list[Any] | None:
            return _list(own.get(field)) if _list(own.get(field)) is not None else _list(glob.get(field))

        allow, also, deny = pick("allow"), pick("alsoAllow"), pick("deny")
        cat = catalogue()
        if allow is not None:
            merged = [] if not allow else list(_unique([*allow, *(also or ())]))
        else:
            merged = list(_unique([*cat.sandbox_allow, *(also or ())]))
        if deny is None:
            # The defaults, minus what an explicit allow names (groups and globs; upstream expands
            # no plugin groups here).
            explicit = [a for e in (*(allow or ()), *(also or ())) if isinstance(e, str) for a in _atoms(e) if a != _PLUGINS]
            deny = [d for d in cat.sandbox_deny if not any(_matches(a, d) for a in explicit)]
        return Policy("sandbox (tools.sandbox.tools and defaults)", tuple(merged), tuple(deny))

    def _subagent(self, key: str) -> Policy | None:
        """Subagent sessions: the fixed deny lists (leaf depth adds more), then tools.subagents.tools."""
        if not is_subagent_key(key):
            return None
        depth = len(_SUBAGENT_MARK.findall(_rest(key)))
        raw = _dict(_dict(self.rules.agents.get("defaults")).get("subagents")).get("maxSpawnDepth")
        finite = isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)
        limit = max(1, math.floor(raw)) if finite and isinstance(raw, (int, float)) else 5
        leaf = depth >= limit
        return self._once(("subagent", leaf), lambda: self._subagent_policy(leaf, limit))

    def _subagent_policy(self, leaf: bool, limit: int) -> Policy:
        cat = catalogue()
        configured = _dict(_dict(self.rules.tools.get("subagents")).get("tools"))
        allow, also = _list(configured.get("allow")), _list(configured.get("alsoAllow"))
        if allow is not None and also is not None:
            allow = list(_unique([*allow, *also]))
        deny = [*cat.subagent_deny_always, *(cat.subagent_deny_leaf if leaf else ()), *(_list(configured.get("deny")) or ())]
        role = f"leaf: depth >= maxSpawnDepth {limit}" if leaf else f"orchestrator: depth < maxSpawnDepth {limit}"
        return Policy(f"subagent ({role})", None if allow is None else tuple(allow), tuple(deny))

    def _gateway(self, tool: ToolName, owner: bool) -> Step:
        """The final HTTP filter (sidecar.toolpolicy.ToolGate), plus gateway.tools.deny patterns."""
        if (why := self.gate.refusal(tool, owner=owner)) is not None:
            return Step("gateway", "deny", why)
        if (hit := first_match(self.rules.gateway.tools.deny, tool.name)) is not None:
            return Step("gateway", "deny", f"gateway.tools.deny {hit!r} (patterns matched as in every deny list)")
        return Step("gateway", "allow", "not on the hard deny list, owner-only list or gateway.tools.deny")


def _account_id(value: str | None) -> str:
    """normalizeAccountId: absent or blank is `default`."""
    canonical = _canonical_id(_trim(value))
    return canonical if canonical and canonical not in ("__proto__", "constructor", "prototype") else "default"


def _account_key(accounts: Mapping[str, Any], account: str) -> str | None:
    """resolveAccountKey: the exact key, else the first whose trimmed lower-case form matches."""
    if account in accounts:
        return account
    return next((k for k in _js_keys(accounts) if _lower(k) == account), None)


def _group_context(key: str) -> tuple[str, tuple[str, ...]] | None:
    """resolveGroupContextFromSessionKey: (channel, group id candidates) of a `<channel>:group:<id>`
    or `<channel>:channel:<id>` key, its last `:thread:` suffix stripped. The channel plugins' own
    conversation resolvers add candidates after these (runtime; not modelled)."""
    raw = js_trim(key)
    marker = raw.lower().rfind(":thread:")
    base = raw if marker == -1 else raw[:marker]
    conversation = _conversation(base)
    if conversation is not None:
        channel, raw_id = conversation
        resolved = js_trim(raw_id[:m] if (m := raw_id.lower().rfind(":thread:")) != -1 else raw_id)
        return channel, _unique(c for c in (*_scoped_candidates(raw_id), resolved) if c)
    # The fallback parser: exact-case `agent`, `subagent`, `group` and `channel` segments.
    body = [p for p in base.split(":") if p]
    body = body[2:] if body[:1] == ["agent"] else body
    body = body[1:] if body[:1] == ["subagent"] else body
    if len(body) < 3 or body[1] not in ("group", "channel") or not js_trim(":".join(body[2:])):
        return None
    return _lower(body[0]), _scoped_candidates(js_trim(":".join(body[2:])))


def _conversation(key: str) -> tuple[str, str] | None:
    """parseRawSessionConversationRef: (channel, raw id) of `[agent:<id>:]<channel>:<kind>:<id>`."""
    parts = js_trim(key).split(":")
    wrapped = _lower(parts[0]) == "agent"
    if wrapped and (len(parts) < 3 or not _trim(parts[1])):
        return None
    body = parts[2:] if wrapped else parts
    if len(body) < 3 or _lower(body[0]) == "agent" or not _trim(body[2]):
        return None
    channel, kind, raw_id = _lower(body[0]), _lower(body[1]), _trim(":".join(body[2:]))
    return (channel, raw_id) if channel and kind in ("group", "channel") and raw_id else None


def _scoped_candidates(group_id: str) -> tuple[str, ...]:
    """buildScopedGroupIdCandidates: topic and sender forms fall back to the chat id."""
    if match := _TOPIC_SENDER.match(group_id):
        return _unique([group_id, f"{match[1]}:topic:{match[2]}", match[1]])
    if match := _TOPIC.match(group_id):
        return _unique([f"{match[1]}:topic:{match[2]}", match[1]])
    if match := _SENDER.match(group_id):
        return _unique([group_id, match[1]])
    return (group_id,)
