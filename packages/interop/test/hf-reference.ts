/**
 * An independent forward pass of the Hugging Face decoders, in plain JavaScript (float64, no tfjs),
 * written from the equations of transformers' modeling code (modeling_llama.py, modeling_qwen2.py,
 * modeling_mixtral.py, modeling_qwen2_moe.py, modeling_qwen3_moe.py, modeling_olmoe.py in
 * github.com/huggingface/transformers) and reading only config.json fields and HF tensor names:
 *
 *   h = embed_tokens[ids]
 *   per layer:  a = input_layernorm(h)
 *               q = q_proj(a) [→ q_norm over the projection (olmoe)] → heads [→ q_norm per head (qwen3_moe)] → RoPE
 *               k likewise with num_key_value_heads heads; v = v_proj(a); repeat_kv
 *               h += o_proj(softmax(q k^T / √head_dim + causal) v)
 *               m = post_attention_layernorm(h)
 *               dense: h += down(silu(gate(m)) · up(m))
 *               MoE:   p = softmax(gate(m)); top-k; (renormalise: mixtral always, others norm_topk_prob)
 *                      h += Σ_e p_e · down_e(silu(gate_e(m)) · up_e(m))  [+ σ(shared_expert_gate(m)) · shared_expert(m)]
 *   logits = lm_head(norm(h))  (embed_tokens when tie_word_embeddings)
 *   RMSNorm(x) = w · x / √(mean(x²) + rms_norm_eps);  RoPE: rotate_half, inv_freq_i = θ^(−2i/head_dim),
 *   rescaled by rope_scaling (modeling_rope_utils.py: linear, llama3, yarn with its attention factor on cos / sin);
 *   sliding window w (mixtral sliding_window; qwen use_sliding_window with max_window_layers 0): key j is
 *   visible to query i when i − w < j <= i.
 */
type Json = Record<string, unknown>;
export type HfTensors = Map<string, { shape: number[]; data: Float32Array }>;

function linear(x: Float64Array, n: number, w: { shape: number[]; data: Float32Array }, b?: { data: Float32Array }): Float64Array {
  const [out, inF] = w.shape as [number, number];
  const y = new Float64Array(n * out);
  for (let r = 0; r < n; r++)
    for (let o = 0; o < out; o++) {
      let s = b ? b.data[o]! : 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i]! * w.data[o * inF + i]!;
      y[r * out + o] = s;
    }
  return y;
}

function rmsNorm(x: Float64Array, width: number, w: Float32Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let s = 0; s < x.length; s += width) {
    let ms = 0;
    for (let c = 0; c < width; c++) ms += x[s + c]! ** 2;
    const r = 1 / Math.sqrt(ms / width + eps);
    for (let c = 0; c < width; c++) y[s + c] = w[c]! * (x[s + c]! * r);
  }
  return y;
}

const silu = (v: number) => v / (1 + Math.exp(-v));

/** down(silu(gate(x)) · up(x)) for rows x [n, d]. */
function swiglu(x: Float64Array, n: number, t: HfTensors, prefix: string, names: [string, string, string]): Float64Array {
  const g = linear(x, n, t.get(`${prefix}${names[0]}.weight`)!, t.get(`${prefix}${names[0]}.bias`));
  const u = linear(x, n, t.get(`${prefix}${names[1]}.weight`)!, t.get(`${prefix}${names[1]}.bias`));
  for (let i = 0; i < g.length; i++) g[i] = silu(g[i]!) * u[i]!;
  return linear(g, n, t.get(`${prefix}${names[2]}.weight`)!, t.get(`${prefix}${names[2]}.bias`));
}

/** inv_freq and the cos / sin factor of a config (rope_scaling as transformers' modeling_rope_utils.py computes them). */
function ropeFrequencies(config: Json, dh: number): { inv: number[]; mscale: number } {
  const theta = config.rope_theta as number;
  const inv = Array.from({ length: dh / 2 }, (_, i) => 1 / theta ** ((2 * i) / dh));
  const rs = config.rope_scaling as Json | null | undefined;
  if (!rs) return { inv, mscale: 1 };
  const factor = rs.factor as number;
  switch (rs.rope_type ?? rs.type) {
    case 'linear':
      return { inv: inv.map((f) => f / factor), mscale: 1 };
    case 'llama3': {
      const old = rs.original_max_position_embeddings as number;
      const lowWave = old / (rs.low_freq_factor as number);
      const highWave = old / (rs.high_freq_factor as number);
      const out = inv.map((f) => {
        const wave = (2 * Math.PI) / f;
        if (wave > lowWave) return f / factor;
        if (wave < highWave) return f;
        const smooth = (old / wave - (rs.low_freq_factor as number)) / ((rs.high_freq_factor as number) - (rs.low_freq_factor as number));
        return ((1 - smooth) * f) / factor + smooth * f;
      });
      return { inv: out, mscale: 1 };
    }
    case 'yarn': {
      const old = (rs.original_max_position_embeddings as number | undefined) ?? (config.max_position_embeddings as number);
      const corr = (rot: number) => (dh * Math.log(old / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
      const trunc = rs.truncate !== false;
      let low = corr((rs.beta_fast as number | undefined) ?? 32);
      let high = corr((rs.beta_slow as number | undefined) ?? 1);
      if (trunc) [low, high] = [Math.floor(low), Math.ceil(high)];
      [low, high] = [Math.max(low, 0), Math.min(high, dh - 1)];
      if (low === high) high += 0.001;
      const out = inv.map((f, i) => {
        const extrapolation = 1 - Math.min(1, Math.max(0, (i - low) / (high - low)));
        return (f / factor) * (1 - extrapolation) + f * extrapolation;
      });
      const attention = (rs.attention_factor as number | undefined) ?? (factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1);
      return { inv: out, mscale: attention };
    }
  }
  throw new Error(`hfForward: rope_scaling ${JSON.stringify(rs)}`);
}

/** The sliding window every layer uses, or Infinity. */
function slidingWindow(config: Json): number {
  if (config.model_type === 'mixtral') return (config.sliding_window as number | null) ?? Number.POSITIVE_INFINITY;
  if (config.use_sliding_window && (config.max_window_layers as number) === 0) return config.sliding_window as number;
  return Number.POSITIVE_INFINITY;
}

/** Logits [T, vocab] of one sequence of token ids. */
export function hfForward(config: Json, t: HfTensors, ids: number[]): Float64Array {
  const type = config.model_type as string;
  const d = config.hidden_size as number;
  const H = config.num_attention_heads as number;
  const Hkv = (config.num_key_value_heads as number | undefined) ?? H;
  const dh = type === 'olmoe' || type === 'qwen2_moe' || type === 'qwen2' ? d / H : ((config.head_dim as number | undefined) ?? d / H);
  const eps = config.rms_norm_eps as number;
  const V = config.vocab_size as number;
  const T = ids.length;
  const emb = t.get('model.embed_tokens.weight')!;
  let h: Float64Array = new Float64Array(T * d);
  ids.forEach((id, r) => {
    for (let c = 0; c < d; c++) h[r * d + c] = emb.data[id * d + c]!;
  });
  const { inv, mscale } = ropeFrequencies(config, dh);
  const window = slidingWindow(config);
  const rope = (x: Float64Array, heads: number) => {
    for (let p = 0; p < T; p++)
      for (let hh = 0; hh < heads; hh++) {
        const at = (p * heads + hh) * dh;
        const x1 = x.slice(at, at + dh / 2);
        const x2 = x.slice(at + dh / 2, at + dh);
        for (let i = 0; i < dh / 2; i++) {
          const ang = p * inv[i]!;
          const cos = mscale * Math.cos(ang);
          const sin = mscale * Math.sin(ang);
          x[at + i] = x1[i]! * cos - x2[i]! * sin;
          x[at + dh / 2 + i] = x2[i]! * cos + x1[i]! * sin;
        }
      }
  };
  for (let l = 0; l < (config.num_hidden_layers as number); l++) {
    const p = `model.layers.${l}.`;
    const a = rmsNorm(h, d, t.get(`${p}input_layernorm.weight`)!.data, eps);
    const proj = (name: string) => linear(a, T, t.get(`${p}self_attn.${name}.weight`)!, t.get(`${p}self_attn.${name}.bias`));
    let q = proj('q_proj');
    let k = proj('k_proj');
    const v = proj('v_proj');
    if (type === 'olmoe') {
      q = rmsNorm(q, H * dh, t.get(`${p}self_attn.q_norm.weight`)!.data, eps);
      k = rmsNorm(k, Hkv * dh, t.get(`${p}self_attn.k_norm.weight`)!.data, eps);
    } else if (type === 'qwen3_moe') {
      q = rmsNorm(q, dh, t.get(`${p}self_attn.q_norm.weight`)!.data, eps);
      k = rmsNorm(k, dh, t.get(`${p}self_attn.k_norm.weight`)!.data, eps);
    }
    rope(q, H);
    rope(k, Hkv);
    const att = new Float64Array(T * H * dh);
    for (let hh = 0; hh < H; hh++) {
      const g = Math.floor(hh / (H / Hkv));
      for (let i = 0; i < T; i++) {
        const s: number[] = [];
        const j0 = Math.max(0, i - window + 1);
        for (let j = j0; j <= i; j++) {
          let dot = 0;
          for (let c = 0; c < dh; c++) dot += q[(i * H + hh) * dh + c]! * k[(j * Hkv + g) * dh + c]!;
          s.push(dot / Math.sqrt(dh));
        }
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const z = e.reduce((x, y) => x + y, 0);
        for (let c = 0; c < dh; c++) {
          let acc = 0;
          for (let j = j0; j <= i; j++) acc += (e[j - j0]! / z) * v[(j * Hkv + g) * dh + c]!;
          att[(i * H + hh) * dh + c] = acc;
        }
      }
    }
    const o = linear(att, T, t.get(`${p}self_attn.o_proj.weight`)!, t.get(`${p}self_attn.o_proj.bias`));
    for (let i = 0; i < h.length; i++) h[i]! += o[i]!;
    const m = rmsNorm(h, d, t.get(`${p}post_attention_layernorm.weight`)!.data, eps);
    let f: Float64Array;
    if (type === 'llama' || type === 'qwen2') f = swiglu(m, T, t, `${p}mlp.`, ['gate_proj', 'up_proj', 'down_proj']);
    else {
      const blk = type === 'mixtral' ? `${p}block_sparse_moe.` : `${p}mlp.`;
      const names: [string, string, string] = type === 'mixtral' ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
      const E = (type === 'mixtral' ? config.num_local_experts : config.num_experts) as number;
      const K = config.num_experts_per_tok as number;
      const renorm = type === 'mixtral' ? true : (config.norm_topk_prob as boolean);
      const logits = linear(m, T, t.get(`${blk}gate.weight`)!);
      f = new Float64Array(T * d);
      for (let r = 0; r < T; r++) {
        const z = Array.from(logits.subarray(r * E, (r + 1) * E));
        const mx = Math.max(...z);
        const ex = z.map((x) => Math.exp(x - mx));
        const sum = ex.reduce((x, y) => x + y, 0);
        const prob = ex.map((x) => x / sum);
        const top = prob
          .map((pr, e) => [pr, e] as const)
          .sort((x, y) => y[0] - x[0])
          .slice(0, K);
        const tot = top.reduce((x, y) => x + y[0], 0);
        const row = m.slice(r * d, (r + 1) * d);
        for (const [pr, e] of top) {
          const y = swiglu(row, 1, t, `${blk}experts.${e}.`, names);
          const w = renorm ? pr / tot : pr;
          for (let c = 0; c < d; c++) f[r * d + c]! += w * y[c]!;
        }
        if (type === 'qwen2_moe') {
          const y = swiglu(row, 1, t, `${blk}shared_expert.`, ['gate_proj', 'up_proj', 'down_proj']);
          const gate = 1 / (1 + Math.exp(-linear(row, 1, t.get(`${blk}shared_expert_gate.weight`)!)[0]!));
          for (let c = 0; c < d; c++) f[r * d + c]! += gate * y[c]!;
        }
      }
    }
    for (let i = 0; i < h.length; i++) h[i]! += f[i]!;
  }
  h = rmsNorm(h, d, t.get('model.norm.weight')!.data, eps);
  const head = config.tie_word_embeddings ? emb : t.get('lm_head.weight')!;
  const out = linear(h, T, head);
  if (out.length !== T * V) throw new Error('hfForward: vocabulary mismatch');
  return out;
}
