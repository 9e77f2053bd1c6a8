"""A loaded model ready for serving: write patterns into weights, read queries back. No graph kept."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .checkpoint import Checkpoint
from .energy import Params
from .familiarity import default_window, query_familiarity
from .memory import ReadResult, WriteResult, append, read, read_joint, write
from .sampling import Candidates, sample, top_k


STATE = "append."     # a session's append state is kept beside its weights under this prefix


@dataclass
class Memory:
    """Wraps a checkpoint's model with its detached parameters, resolved once at start-up."""
    ckpt: Checkpoint

    def __post_init__(self) -> None:
        self.params: Params = self.ckpt.model.params(detach=True)
        self.device = next(iter(self.params.values())).device
        # once: every read checks a session's tensors against them, and naming the writable parameters
        # walks the module tree
        self._writable_shapes = {n: tuple(self.params[n].shape) for n in self.ckpt.model.writable}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.ckpt.model.cfg.input_shape)

    @property
    def capacity(self) -> int | None:
        """Patterns a session holds apart; past it, patterns share memory and are recalled blended."""
        return self.ckpt.model.capacity

    def capacity_warning(self, n: int) -> str | None:
        c = self.capacity
        if c is None or n <= c:
            return None
        return (f"{n} patterns exceed this model's capacity of {c}: pattern i shares its memory slot with "
                f"pattern i + {c} (and so on), and such patterns are recalled as a blend of each other")

    @property
    def writable_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._writable_shapes)

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """What a session keeps beside its written weights for exact appends (EnergyNet.append_state), as
        "append.<name>" tensors; {} for energies without one."""
        if not hasattr(self, "_state_shapes"):
            st = self.ckpt.model.energy.append_state(torch.zeros(1, *self.input_shape, device=self.device))
            self._state_shapes = {STATE + n: tuple(t.shape) for n, t in (st or {}).items()}
        return self._state_shapes

    def check_session(self, tensors: Params) -> None:
        """ValueError unless tensors are this model's written slice, with or without its append state
        (sessions written before the state existed have none, and append by further write steps)."""
        got = {n: tuple(t.shape) for n, t in tensors.items()}
        expected = self._writable_shapes
        if self.ckpt.model.energy.append_state_grows:      # one row per stored pattern: any number of rows
            got = {n: (1, *s[1:]) if n.startswith(STATE) and len(s) >= 1 else s for n, s in got.items()}
        if got != expected and got != {**expected, **self.state_shapes}:
            raise ValueError(f"written weights {got} do not match the model's writable slice {expected}"
                             + (f" (and append state {self.state_shapes})" if self.state_shapes else ""))

    @property
    def familiarity_threshold(self) -> float | None:
        """The card's calibrated threshold (`ebmm familiarity --update-card`), or None."""
        f = self.ckpt.card.get("familiarity") or {}
        return None if f.get("threshold") is None else float(f["threshold"])

    @property
    def candidate_threshold(self) -> float | None:
        """The threshold for top-k candidates' and samples' `match`: the card's where they are scored like the
        queries; None where the queries have the energy's own score (span memories), whose calibrated
        threshold says nothing about a candidate's agreement with its query."""
        return None if self.ckpt.model.energy.scores_familiarity_itself else self.familiarity_threshold

    @property
    def familiarity_window(self) -> int:
        f = self.ckpt.card.get("familiarity") or {}
        if "window" in f:
            return int(f["window"])
        spec = str(self.ckpt.card.get("training", {}).get("distortion", "none")).split(",")[0]
        try:
            return default_window(self.ckpt.model, spec)
        except ValueError:
            return 0

    @property
    def reads_known_pixels(self) -> bool:
        """Whether a masked read tells the energy which pixels are unknown (its recall then fills exactly
        them, and is the one to score familiarity by); else a masked read only keeps the known pixels."""
        return self.ckpt.model.energy.reads_known_pixels

    @torch.inference_mode()
    def familiarity(self, weights: Params, queries: Tensor, recall: Tensor, known: Tensor | None = None) -> Tensor:
        """(B,) in [0, 1]: whether the queries were stored, from what the memory recalled from them or
        from the memory itself (model/familiarity.py: query_familiarity)."""
        return query_familiarity(self.ckpt.model, self.params, self._weights(weights),
                                  self._check("queries", queries), recall.to(self.device, torch.float32),
                                  self.familiarity_window, None if known is None else known.to(self.device)).cpu()

    def _check(self, name: str, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} has shape {tuple(x.shape[1:])} per item, expected {self.input_shape}")
        return x.to(self.device, torch.float32)

    def write(self, patterns: Tensor) -> WriteResult:
        """patterns (N, *input_shape) in [0, 1] -> written weights (on the CPU, for storage), with the append
        state where the energy has one."""
        x = self._check("patterns", patterns)
        res = write(self.ckpt.model, self.params, x)
        state = self.ckpt.model.energy.append_state(x) or {}
        return WriteResult({**{n: t.cpu() for n, t in res.weights.items()},
                            **{STATE + n: t.cpu() for n, t in state.items()}}, res.losses)

    @property
    def append_rule(self) -> str:
        """"redeal": the energy re-deals its memory as a write of all patterns at once would (slot memories);
        "add": the write adds a function of the patterns at every step, so further write steps on the new
        patterns write what a write of all at once would (span memories); "restate": sessions keep an append
        state and an append writes from it what a write of all patterns at once would (quadratic memories:
        sums over the patterns; gated RNNs: the patterns); "continue": further write steps from the written
        weights on the new patterns only, which can disturb the old."""
        if self.ckpt.model.energy.redeals_on_append:
            return "redeal"
        if self.ckpt.model.energy.writes_additively:
            return "add"
        return "restate" if self.state_shapes else "continue"

    def session_append_rule(self, weights: Params) -> str:
        """The append rule for one session: "continue" for a session without the state its model keeps now."""
        rule = self.append_rule
        return "continue" if rule == "restate" and not any(n.startswith(STATE) for n in weights) else rule

    def append(self, weights: Params, patterns: Tensor, n_old: int) -> WriteResult:
        """More patterns into written weights that hold n_old (model/memory.py: append): exact from the append
        state where the session has one, and the state updated."""
        w = self._weights(weights)
        x = self._check("patterns", patterns)
        state = {n[len(STATE):]: t.to(self.device) for n, t in weights.items() if n.startswith(STATE)} or None
        res = append(self.ckpt.model, self.params, w, x, n_old, state)
        out = {n: t.cpu() for n, t in res.weights.items()}
        if state is not None:
            total = self.ckpt.model.energy.combine_append_states(state, self.ckpt.model.energy.append_state(x))
            out.update({STATE + n: t.cpu() for n, t in total.items()})
        return WriteResult(out, res.losses)

    def _weights(self, weights: Params) -> Params:
        """A session's tensors -> the written slice on the model's device (the append state left out)."""
        self.check_session(weights)
        return {n: t.to(self.device, torch.float32) for n, t in weights.items() if not n.startswith(STATE)}

    def top_k(self, weights: Params, queries: Tensor, k: int, mask: Tensor | None = None,
              steps: int | None = None) -> Candidates:
        """The k best distinct candidates per query, ranked by familiarity (model/sampling.py)."""
        m = None if mask is None else self._check("mask", mask.to(torch.float32))
        c = top_k(self.ckpt.model, self.params, self._weights(weights), self._check("queries", queries), k, m,
                  steps, self.familiarity_window)
        return Candidates(c.patterns.cpu(), c.familiarity.cpu(), c.energies.cpu(), c.count.cpu())

    def sample(self, weights: Params, queries: Tensor, n: int, temperature: float, mask: Tensor | None = None,
               steps: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """n stochastic reads per query: samples (B, n, *P), familiarity (B, n), energies (B, n)."""
        m = None if mask is None else self._check("mask", mask.to(torch.float32))
        out = sample(self.ckpt.model, self.params, self._weights(weights), self._check("queries", queries), n,
                     temperature, m, steps, self.familiarity_window, seed)
        return tuple(t.cpu() for t in out)  # type: ignore[return-value]

    @torch.inference_mode()
    def read(self, weights: Params, queries: Tensor, mask: Tensor | None = None,
             steps: int | None = None, energies: str = "all") -> ReadResult:
        """queries (B, *input_shape) in [0, 1]; mask True where a pixel is known (kept fixed).
        energies: "all" (every iterate's, (K+1, B)) or "last" (the result's, (1, B)).

        Serving reads (this, `read_many`, `familiarity`) run in inference mode: no version counters or
        autograd records on any tensor they make (measured 10-15% off a 1-query read). What they return is
        read-only outside inference mode; the model's own parameters are untouched."""
        w = self._weights(weights)
        m = None if mask is None else self._check("mask", mask.to(torch.float32))
        res = read(self.ckpt.model, self.params, w, self._check("queries", queries), m, steps, energies=energies)
        return ReadResult(res.iterates.cpu(), res.energies.cpu())

    @property
    def stacks_weights(self) -> bool:
        """Whether reads of several sessions run as one batched call (EnergyNet.stacks_weights)."""
        return self.ckpt.model.energy.stacks_weights

    @torch.inference_mode()
    def read_many(self, weights: list[Params], queries: list[Tensor], steps: int | None = None,
                  energies: str = "all") -> list[tuple[ReadResult, Tensor]]:
        """Reads of several sessions in one call, queries[i] on weights[i], each with its queries' familiarity
        (`read`, then `familiarity`; equal to separate calls). Energies that stack written memories read all
        queries at once (model/memory.py: read_joint) and score them on the same stacked memories."""
        model, ws = self.ckpt.model, [self._weights(w) for w in weights]
        qs = [self._check("queries", q) for q in queries]
        window = self.familiarity_window
        if not self.stacks_weights or len(ws) == 1:
            reads = [read(model, self.params, w, q, steps=steps, energies=energies)
                     for w, q in zip(ws, qs, strict=True)]
            fams = [query_familiarity(model, self.params, w, q, r.iterates[-1], window)
                    for w, q, r in zip(ws, qs, reads, strict=True)]
        else:
            stacked, x, res = read_joint(model, self.params, ws, qs, steps, energies)
            counts = [q.shape[0] for q in qs]
            fams = list(query_familiarity(model, self.params, stacked, x, res.iterates[-1], window).split(counts))
            reads = [ReadResult(i, e) for i, e in zip(res.iterates.split(counts, dim=1),
                                                      res.energies.split(counts, dim=1), strict=True)]
        return [(ReadResult(r.iterates.cpu(), r.energies.cpu()), f.cpu()) for r, f in zip(reads, fams, strict=True)]
