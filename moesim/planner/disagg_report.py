"""The text report of the serving modes: the disaggregated pairs, the DES check, the winner."""
from __future__ import annotations

from moesim.textfmt import table


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def render_modes(result, top: int = 5) -> str:
    """The disaggregated section of ``moesim plan`` (empty when the mode was not searched)."""
    d = result.disaggregated
    if d is None:
        return ""
    sc = result.scenario
    f = sc.features
    feat = [f"prefix-cache hit rate {f.prefix_cache_hit_rate:.0%}"]
    if f.speculative is not None:
        s = f.speculative
        feat.append(f"{s.method} speculative decoding: {s.draft_tokens} draft token(s), acceptance "
                    f"{s.acceptance_rate:.0%} -> {s.tokens_per_step:.2f} tokens/step")
    lines = ["", f"disaggregated prefill/decode ({', '.join(feat)}): {d.pool_configurations} pool configurations "
             f"evaluated, {d.configurations:,} pairs screened"]
    if not d.ranked:
        lines.append(f"no disaggregated deployment meets the target; closest: {d.lacks()}")
        return "\n".join(lines)
    rows = []
    for i, c in enumerate(d.ranked[:top], 1):
        p, q = c.prefill, c.decode
        rows.append((i, f"{p.replicas}x {p.layout.describe()}", p.batch, f"{q.replicas}x {q.layout.describe()}",
                     q.batch, f"{p.devices}:{q.devices}", _ms(p.ttft_s), _ms(p.transfer_s), _ms(q.tpot_s),
                     f"{c.usd_per_hour:,.2f}", f"{c.usd_per_million_tokens:.3f}", q.bottleneck))
    lines.append(table(rows, ["#", "prefill pool", "tok/rank", "decode pool", "seq/dev", "P:D devices",
                              "TTFT ms", "KV xfer ms", "TPOT ms", "$/h", "$/M tok", "decode bottleneck"]))
    b, v = d.answer, d.verification
    lines.append(f"disaggregated answer: {b.describe()}, {b.total_devices} devices, ${b.usd_per_hour:,.2f}/h "
                 "(analytic)" + (f"; decode overlap {b.decode.overlap}" if b.decode.overlap else ""))
    if v is not None:
        if v.met:
            ci = (f" (95% interval {v.tpot_p99_ci[0] * 1e3:.1f}-{v.tpot_p99_ci[1] * 1e3:.1f} ms)"
                  if v.tpot_p99_ci else "")
            lines.append(f"  verified by the serving DES: {v.prefill_replicas} prefill + {v.decode_replicas} decode "
                         f"replicas meet the SLO, ${v.usd_per_hour:,.2f}/h; p99 TTFT {_ms(v.ttft_p99_s)} ms, "
                         f"p99 TPOT {_ms(v.tpot_p99_s)} ms{ci}")
        else:
            lines.append(f"  serving DES: {'; '.join(v.notes)}")
    for other in d.verifications:
        if other is not v:
            lines.append(f"  also checked by the serving DES: {other.candidate_key}: " + (
                f"{other.prefill_replicas} prefill + {other.decode_replicas} decode replicas, ${other.usd_per_hour:,.2f}/h"
                if other.met else "; ".join(other.notes)))
    if result.modes is not None:
        lines.append(f"serving modes: {result.modes.text()}")
    return "\n".join(lines)
