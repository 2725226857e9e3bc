"""Graph edits of ``shrink``: fold BatchNorm and affine maps, merge chains of convs/linears and residual blocks.

Every edit is recorded as a small dict (which nodes, which new module shape) so that a plan can replay the same
edits on a fresh instance of the architecture (:mod:`nepenthe.surgery.plan`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .affine import ChannelAffine
from .algebra import (
    BorderBiasConv2d,
    ConvOp,
    LinearOp,
    Refusal,
    compose_conv_shapes,
    compose_convs,
    conv_flops,
    conv_module_from_op,
    conv_module_from_shape,
    conv_op_from_module,
    conv_shape,
    identity_conv,
    scale_conv_input,
    scale_conv_output,
    sum_conv_shapes,
    sum_convs,
)
from .constants import CONSTANT_EDITS, CONSTANT_MODULES, apply_constant_edit, constant_module_from_spec, constant_pass

_ADDS = (operator.add, operator.iadd, torch.add)
_DROPOUTS = (nn.modules.dropout._DropoutNd, nn.Identity)


def module_from_spec(spec: dict) -> nn.Module:
    """An (uninitialised) module of the shape an edit recorded."""
    kind = spec["type"]
    if kind in CONSTANT_MODULES:
        return constant_module_from_spec(spec)
    if kind == "conv2d":
        return conv_module_from_shape(spec)
    if kind == "linear":
        return nn.Linear(spec["in_features"], spec["out_features"])
    raise ValueError(f"plan: unknown module type {kind!r}")


def apply_edit(gm: fx.GraphModule, edit: dict, module: nn.Module | None) -> None:
    """Rewire ``gm`` as ``edit`` says, installing ``module`` at ``edit['target']`` when given."""
    if edit["kind"] in CONSTANT_EDITS:
        return apply_constant_edit(gm, edit, module)
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [
        n
        for n in [edit.get("keep"), edit["output_of"], edit.get("new_input"), *edit["removed"]]
        if n and n not in nodes
    ]
    if missing:
        raise ValueError(f"plan: nodes {missing} are not in the traced model; is it the architecture the plan is for?")
    out = nodes[edit["output_of"]]
    if edit["kind"] == "drop":
        out.replace_all_uses_with(out.args[0])
    else:
        keep = nodes[edit["keep"]]
        gm.add_submodule(edit["target"], module)
        keep.target = edit["target"]
        if edit.get("new_input"):
            keep.args = (nodes[edit["new_input"]], *keep.args[1:])
        if out is not keep:
            keep.meta = dict(out.meta)
            out.replace_all_uses_with(keep)
    for name in reversed(edit["removed"]):
        gm.graph.erase_node(nodes[name])


@dataclass
class Decision:
    """One merge or fold considered: ``done`` or skipped with ``reason``."""

    what: str
    done: bool
    reason: str = ""
    flops_before: int | None = None
    flops_after: int | None = None


@dataclass
class Surgeon:
    """Applies the shrink edits to a traced, shape-propagated GraphModule."""

    gm: fx.GraphModule
    skip_slower: bool = True
    edits: list[dict] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    _merged_with: dict[str, str] = field(default_factory=dict)
    _pair_reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    _site_of: dict[str, str] = field(default_factory=dict)
    _site_folds: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    _site_desc: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in self.gm.graph.nodes:
            m = self.module(n)
            if isinstance(m, ChannelAffine) and m.site:
                self._site_of[n.name] = m.site
                users = ", ".join(self._describe(u) for u in n.users)
                self._site_desc[m.site] = f"between {self._describe(n.args[0])} and {users or 'nothing'}"

    def _describe(self, n: object) -> str:
        if not isinstance(n, fx.Node):
            return repr(n)
        if n.op == "call_module":  # a shared activation's call site by its own name (relu@1), not relu.original
            return f"{n.meta.get('call_site', n.target)} ({type(self.module(n)).__name__})"
        if n.op == "call_function":
            return getattr(n.target, "__name__", str(n.target))
        return f"{n.op} {n.target}"

    def site_outcomes(self) -> dict[str, str]:
        """For every linearized call site: folded and merged, or why the layers around it stayed apart."""
        out = {}
        live = {n.name: n for n in self.gm.graph.nodes}
        for name, site in self._site_of.items():
            if name in live:
                out[site] = f"kept as a per-channel affine map {self._site_desc[site]}: no conv/linear to fold into"
                continue
            if site not in self._site_folds:
                out[site] = "removed (identity map)"
                continue
            into, other = self._site_folds[site]
            if other is not None and self.root(into) == self.root(other):
                out[site] = "folded, and the layers on both sides merged into one"
                continue
            reason = next(
                (
                    r
                    for (p, q), r in self._pair_reasons.items()
                    if {self.root(p), self.root(q)} == {self.root(into), self.root(other or "")}
                ),
                None,
            )
            if reason is None:
                nxt = live.get(self.root(other)) if other else None
                reason = f"no merge pattern for {self._describe(nxt) if nxt is not None else 'its neighbour'}"
            out[site] = (
                f"folded into {live[self.root(into)].target if self.root(into) in live else into}; not merged: {reason}"
            )
        out.update(getattr(self, "constant_sites", {}))  # set by constant_pass
        return out

    # ---- helpers
    def module(self, n: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(n.target) if n.op == "call_module" else None

    def shape(self, n: object) -> torch.Size | None:
        meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
        return getattr(meta, "shape", None)

    def is_conv(self, n: object) -> bool:
        return (
            isinstance(n, fx.Node)
            and type(self.module(n)) in (nn.Conv2d, BorderBiasConv2d)
            and len(n.args) == 1
            and not n.kwargs
            and self.shape(n.args[0]) is not None
            and len(self.shape(n.args[0])) == 4
        )

    def is_linear(self, n: object) -> bool:
        return isinstance(n, fx.Node) and type(self.module(n)) is nn.Linear and len(n.args) == 1 and not n.kwargs

    def root(self, name: str) -> str:
        while name in self._merged_with:
            name = self._merged_with[name]
        return name

    def _target_for(self, keep: fx.Node) -> str:
        users = [n for n in self.gm.graph.nodes if n.op == "call_module" and n.target == keep.target]
        if len(users) == 1:
            return keep.target
        i = 0
        while True:
            name = f"{keep.target}_merged{i}".replace(".", "_")
            if not hasattr(self.gm, name):
                return name
            i += 1

    def _edit(
        self,
        kind: str,
        what: str,
        output_of: fx.Node,
        removed: list[fx.Node],
        keep: fx.Node | None = None,
        module: nn.Module | None = None,
        spec: dict | None = None,
        new_input: fx.Node | None = None,
    ) -> None:
        edit = {
            "kind": kind,
            "what": what,
            "keep": keep.name if keep is not None else None,
            "target": self._target_for(keep) if keep is not None else None,
            "spec": spec,
            "new_input": new_input.name if new_input is not None else None,
            "output_of": output_of.name,
            "removed": [n.name for n in removed],
        }
        apply_edit(self.gm, edit, module)
        for n in edit["removed"]:
            if keep is not None:
                self._merged_with[n] = keep.name
        self.edits.append(edit)
        self.decisions.append(Decision(what, True))

    def _replace(
        self,
        what: str,
        keep: fx.Node,
        new: ConvOp | LinearOp,
        output_of: fx.Node,
        removed: list[fx.Node],
        new_input: fx.Node | None = None,
    ) -> None:
        old = self.module(keep)
        ref = next(iter(old.parameters()))
        if isinstance(new, ConvOp):
            module = conv_module_from_op(new, ref.dtype, ref.device)
            spec = {"type": "conv2d", **conv_shape(new)}
        else:
            module = new.to_module(ref.dtype, ref.device)
            spec = {"type": "linear", "in_features": module.in_features, "out_features": module.out_features}
        self._edit("replace", what, output_of, removed, keep, module, spec, new_input)

    def op(self, n: fx.Node) -> ConvOp | LinearOp | Refusal:
        m = self.module(n)
        return LinearOp.from_module(m) if isinstance(m, nn.Linear) else conv_op_from_module(m)

    def affine_of(self, n: object) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """``(scale, shift, channel_dim)`` of an eval-mode BatchNorm or ChannelAffine node, else None."""
        if not isinstance(n, fx.Node) or len(n.args) != 1 or n.kwargs:
            return None
        m = self.module(n)
        if isinstance(m, ChannelAffine):
            return m.scale.detach().cpu().double(), m.shift.detach().cpu().double(), m.channel_dim
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.running_mean is not None:
            scale = torch.rsqrt(m.running_var.cpu().double() + m.eps)
            shift = -m.running_mean.cpu().double() * scale
            if m.affine:
                scale, shift = (
                    scale * m.weight.detach().cpu().double(),
                    shift * m.weight.detach().cpu().double() + m.bias.detach().cpu().double(),
                )
            return scale, shift, 1
        return None

    def _channel_dim_matches(self, dim: int, scale: torch.Tensor, tensor_node: fx.Node, conv: bool) -> bool:
        if scale.dim() == 0:
            return True
        shp = self.shape(tensor_node)
        if shp is None:
            return False
        nd = len(shp)
        return (dim % nd == 1) if conv else (dim % nd == nd - 1)

    # ---- passes
    def drop_pass(self) -> bool:
        for n in list(self.gm.graph.nodes):
            m = self.module(n)
            what = None
            if isinstance(m, _DROPOUTS) and not m.training:
                what = f"drop {n.target} ({type(m).__name__}, eval)"
            elif isinstance(m, ChannelAffine) and m.is_identity():
                what = f"drop identity map {n.target} (site {m.site})"
            elif n.op == "call_function" and getattr(n.target, "__name__", "") == "stochastic_depth":
                training = n.kwargs.get("training", n.args[3] if len(n.args) > 3 else True)
                p = n.kwargs.get("p", n.args[1] if len(n.args) > 1 else 1.0)
                if training is False or p == 0:
                    what = f"drop {n.name} (stochastic depth, eval)"
            elif n.op == "call_function" and n.target is F.dropout:
                if n.kwargs.get("training", n.args[2] if len(n.args) > 2 else True) is False:
                    what = f"drop {n.name} (dropout, eval)"
            if what is not None and isinstance(n.args[0], fx.Node):
                self._edit("drop", what, n, [n])
                return True
        return False

    def fold_affine_pass(self) -> bool:
        """Fold BatchNorm / linearized affine maps into the conv or linear before them, else after them."""
        for n in list(self.gm.graph.nodes):
            aff = self.affine_of(n)
            if aff is None:
                continue
            scale, shift, dim = aff
            src = n.args[0]
            label = self._label(n)
            if isinstance(src, fx.Node) and len(src.users) == 1 and (self.is_conv(src) or self.is_linear(src)):
                conv = self.is_conv(src)
                if self._channel_dim_matches(dim, scale, n, conv):
                    op = self.op(src)
                    if not isinstance(op, Refusal):
                        new = scale_conv_output(op, scale, shift) if conv else op.scale_output(scale, shift)
                        other = next(iter(n.users)).name if len(n.users) == 1 else None
                        self._replace(f"fold {label} into {src.target}", src, new, n, [n])
                        self._note_fold(n, src.name, other)
                        return True
            users = list(n.users)
            # fold into every consumer when all of them are convs/linears reading it (e.g. a block's conv1 and
            # its downsample conv): each gets its own copy of the map
            kinds = [self.is_conv(u) or self.is_linear(u) for u in users]
            if users and all(kinds) and all(u.args[0] is n for u in users):
                convs = [self.is_conv(u) for u in users]
                ops = [self.op(u) for u in users]
                if all(self._channel_dim_matches(dim, scale, n, c) for c in convs) and not any(
                    isinstance(o, Refusal) for o in ops
                ):
                    for k, (dst, op, conv) in enumerate(zip(users, ops, convs, strict=True)):
                        new = scale_conv_input(op, scale, shift) if conv else op.scale_input(scale, shift)
                        last = k == len(users) - 1
                        self._replace(
                            f"fold {label} into {dst.target} (input side)", dst, new, dst, [n] if last else [], src
                        )
                    self._note_fold(n, users[0].name, src.name if isinstance(src, fx.Node) else None)
                    return True
        return False

    def _note_fold(self, n: fx.Node, into: str, other: str | None) -> None:
        site = self._site_of.get(n.name)
        if site is not None:
            self._site_folds[site] = (into, other)

    def _label(self, n: fx.Node) -> str:
        m = self.module(n)
        return f"site {m.site}" if isinstance(m, ChannelAffine) and m.site else str(n.target)

    def _in_hw(self, n: fx.Node) -> tuple[int, int]:
        shp = self.shape(n.args[0])
        return (int(shp[-2]), int(shp[-1]))

    def _tokens(self, n: fx.Node) -> int:
        shp = self.shape(n.args[0])
        return int(torch.Size(shp[1:-1]).numel()) if shp is not None else 1

    def _chains(self, is_kind) -> list[list[fx.Node]]:
        chains = []
        for n in self.gm.graph.nodes:
            if not is_kind(n):
                continue
            prev = n.args[0]
            if is_kind(prev) and len(prev.users) == 1:
                continue  # not a chain start
            chain = [n]
            while len(chain[-1].users) == 1:
                (nxt,) = chain[-1].users
                if not (is_kind(nxt) and nxt.args[0] is chain[-1]):
                    break
                chain.append(nxt)
            if len(chain) > 1:
                chains.append(chain)
        return chains

    def chain_pass(self) -> bool:
        for chain in self._chains(self.is_conv):
            if self._merge_conv_chain(chain):
                return True
        for chain in self._chains(self.is_linear):
            if self._merge_linear_chain(chain):
                return True
        return False

    def _plan_segments(self, n: int, seg_cost) -> list[tuple[int, int]]:
        """Split ``0..n-1`` into segments minimising (FLOPs, layers), or (layers, FLOPs) when not skip_slower."""
        best: list[tuple | None] = [None] * (n + 1)
        best[0] = ((0, 0), [])
        for j in range(1, n + 1):
            for i in range(j):
                cost = seg_cost(i, j - 1)
                if cost is None or best[i] is None:
                    continue
                flops, layers = best[i][0][0] + cost, best[i][0][1] + 1
                key = (flops, layers) if self.skip_slower else (layers, flops)
                if best[j] is None or key < best[j][0]:
                    best[j] = (key, best[i][1] + [(i, j - 1)])
        return best[n][1]

    def _merge_conv_chain(self, chain: list[fx.Node]) -> bool:
        ops = [self.op(n) for n in chain]
        bad = {k: o.reason for k, o in enumerate(ops) if isinstance(o, Refusal)}
        if bad:
            for k in range(len(chain) - 1):
                reason = bad.get(k) or bad.get(k + 1)
                if reason:
                    self._note_once(f"merge {chain[k].target} + {chain[k + 1].target}", reason)
                    self._pair_reasons[(chain[k].name, chain[k + 1].name)] = reason
            return False
        flops = [conv_flops(conv_shape(o), self._in_hw(n)) for o, n in zip(ops, chain, strict=True)]
        shapes: dict[tuple[int, int], dict | Refusal] = {}
        for i in range(len(chain)):
            shape, has_bias = conv_shape(ops[i]), bool((ops[i].bias != 0).any())
            shapes[(i, i)] = shape
            for j in range(i + 1, len(chain)):
                shape = compose_conv_shapes(shape, conv_shape(ops[j]), self._in_hw(chain[i]), has_bias)
                shapes[(i, j)] = shape
                if isinstance(shape, Refusal):
                    break
                has_bias = True

        def seg_cost(i: int, j: int) -> int | None:
            s = shapes.get((i, j))
            if s is None or isinstance(s, Refusal):
                return None
            return flops[i] if i == j else conv_flops(s, self._in_hw(chain[i]))

        segments = self._plan_segments(len(chain), seg_cost)
        self._record_pairs(chain, segments, seg_cost, flops, shapes)
        changed = False
        for i, j in segments:
            if i == j:
                continue
            merged: ConvOp | Refusal = ops[i]
            for k in range(i + 1, j + 1):
                merged = compose_convs(merged, ops[k], self._in_hw(chain[i]))
                if isinstance(merged, Refusal):
                    break
            names = " + ".join(str(n.target) for n in chain[i : j + 1])
            if not isinstance(merged, Refusal):
                merged = self._verify_conv(merged, ops[i : j + 1], chain[i])
            if isinstance(merged, Refusal):
                self.decisions.append(Decision(f"merge {names}", False, merged.reason))
                continue
            what = f"merge {names} -> {merged.kernel[0]}x{merged.kernel[1]} conv (groups={merged.groups})"
            self._replace(what, chain[i], merged, chain[j], chain[i + 1 : j + 1])
            self.decisions[-1].flops_before = sum(flops[i : j + 1])
            self.decisions[-1].flops_after = seg_cost(i, j)
            changed = True
        return changed

    def _record_pairs(self, chain, segments, seg_cost, flops, shapes) -> None:
        grouped = {k: s for s in segments for k in range(s[0], s[1] + 1)}
        for k in range(len(chain) - 1):
            if grouped[k] == grouped[k + 1]:
                continue
            a, b = chain[k], chain[k + 1]
            s = shapes.get((k, k + 1))
            if isinstance(s, Refusal):
                reason = s.reason
            else:
                pair = seg_cost(k, k + 1)
                reason = (
                    f"merging raises FLOPs ({pair:,} vs {flops[k] + flops[k + 1]:,} MACs per sample)"
                    if pair is not None and pair > flops[k] + flops[k + 1]
                    else "a lower-FLOPs grouping of the chain was chosen"
                )
            key = (a.name, b.name)
            if self._pair_reasons.get(key) != reason:
                self._pair_reasons[key] = reason
                self.decisions.append(Decision(f"merge {a.target} + {b.target}", False, reason))

    def _verify_conv(self, merged: ConvOp, ops: list[ConvOp], first: fx.Node) -> ConvOp | Refusal:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, ops[0].in_channels, *self._in_hw(first), generator=g, dtype=torch.float64)
        y = x
        for o in ops:
            y = o.apply(y)
        z = merged.apply(x)
        if z.shape != y.shape:
            return Refusal(f"numeric check: output shape {tuple(z.shape)} != {tuple(y.shape)}")
        err = float((z - y).abs().max() / y.abs().max().clamp_min(1e-30))
        if err > 1e-9:
            return Refusal(f"numeric check failed (relative error {err:.2e})")
        return merged

    def _merge_linear_chain(self, chain: list[fx.Node]) -> bool:
        ops = [self.op(n) for n in chain]
        tokens = self._tokens(chain[0])
        flops = [tokens * o.weight.numel() for o in ops]

        def seg_cost(i: int, j: int) -> int:
            return flops[i] if i == j else tokens * ops[i].weight.shape[1] * ops[j].weight.shape[0]

        segments = self._plan_segments(len(chain), seg_cost)
        self._record_pairs(chain, segments, seg_cost, flops, {})
        changed = False
        for i, j in segments:
            if i == j:
                continue
            merged = LinearOp.chain(ops[i : j + 1])
            names = " + ".join(str(n.target) for n in chain[i : j + 1])
            self._replace(f"merge {names} -> one Linear", chain[i], merged, chain[j], chain[i + 1 : j + 1])
            self.decisions[-1].flops_before = sum(flops[i : j + 1])
            self.decisions[-1].flops_after = seg_cost(i, j)
            changed = True
        return changed

    def residual_pass(self) -> bool:
        for n in list(self.gm.graph.nodes):
            if n.op != "call_function" or n.target not in _ADDS or n.kwargs:
                continue
            if len(n.args) != 2 or not all(isinstance(a, fx.Node) for a in n.args):
                continue
            if self.shape(n.args[0]) != self.shape(n.args[1]):
                continue
            for branch, skip in (n.args, n.args[::-1]):
                if self._merge_residual(n, branch, skip):
                    return True
        return False

    def _merge_residual(self, add: fx.Node, branch: fx.Node, skip: fx.Node) -> bool:
        if len(branch.users) != 1 or not (self.is_conv(branch) or self.is_linear(branch)):
            return False
        x = branch.args[0]
        conv = self.is_conv(branch)
        parallel = skip is not x
        if parallel:
            kind_ok = self.is_conv(skip) if conv else self.is_linear(skip)
            if not kind_ok or len(skip.users) != 1 or skip.args[0] is not x:
                return False
        a = self.op(branch)
        b = self.op(skip) if parallel else None
        if isinstance(a, Refusal) or isinstance(b, Refusal):
            return False
        skip_label = f"{skip.target}" if parallel else "identity skip (Dirac kernel)"
        what = f"merge residual {branch.target} + {skip_label} at {add.name}"
        if not conv:
            if not parallel and a.weight.shape[0] != a.weight.shape[1]:
                return False
            other = (
                b
                if parallel
                else LinearOp(torch.eye(a.weight.shape[1], dtype=torch.float64), a.weight.new_zeros(a.weight.shape[1]))
            )
            self._replace(what, branch, a.add(other), add, [skip, add] if parallel else [add])
            return True
        hw = self._in_hw(branch)
        if not parallel:
            if a.in_channels != a.out_channels:
                return False
            b = identity_conv(a.in_channels)
        shape = sum_conv_shapes(conv_shape(a), conv_shape(b), hw)
        before = conv_flops(conv_shape(a), hw) + (conv_flops(conv_shape(b), hw) if parallel else 0)
        if isinstance(shape, Refusal):
            self._note_once(what, shape.reason)
            return False
        after = conv_flops(shape, hw)
        if self.skip_slower and after > before:
            self._note_once(what, f"merging raises FLOPs ({after:,} vs {before:,} MACs per sample)")
            return False
        merged = sum_convs(a, b, hw)
        if not isinstance(merged, Refusal):
            g = torch.Generator().manual_seed(0)
            xx = torch.randn(1, a.in_channels, *hw, generator=g, dtype=torch.float64)
            y = a.apply(xx) + b.apply(xx)
            z = merged.apply(xx)
            if z.shape != y.shape or float((z - y).abs().max() / y.abs().max().clamp_min(1e-30)) > 1e-9:
                merged = Refusal("numeric check failed")
        if isinstance(merged, Refusal):
            self._note_once(what, merged.reason)
            return False
        self._replace(what, branch, merged, add, [skip, add] if parallel else [add])
        self.decisions[-1].flops_before, self.decisions[-1].flops_after = before, after
        return True

    def _note_once(self, what: str, reason: str) -> None:
        if not any(d.what == what and d.reason == reason for d in self.decisions):
            self.decisions.append(Decision(what, False, reason))

    def run(self) -> None:
        """Apply all passes until none changes the graph."""
        while (
            self.drop_pass()
            or self.fold_affine_pass()
            or constant_pass(self)
            or self.chain_pass()
            or self.residual_pass()
        ):
            pass
        self.gm.graph.eliminate_dead_code()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()


def replay(gm: fx.GraphModule, edits: list[dict]) -> fx.GraphModule:
    """Apply recorded edits to a freshly traced GraphModule (module values are placeholders)."""
    for edit in edits:
        apply_edit(gm, edit, module_from_spec(edit["spec"]) if edit["spec"] else None)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
