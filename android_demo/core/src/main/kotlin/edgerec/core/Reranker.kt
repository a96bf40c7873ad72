package edgerec.core

import kotlin.math.exp
import kotlin.math.sqrt

/** The post-ranking policy, the same rules and defaults as `edge_rec/policy.py` (each part switchable off). */
data class PostRankPolicy(val enabled: Boolean = true, val mmrLambda: Double = 0.8, val maxPerCreator: Int? = 2,
                          val skipPenalty: Double = 0.3, val negativePenalty: Double = 0.5,
                          val freshnessBoost: Double = 0.1, val freshnessTauH: Double = 24.0, val window: Int = 20)

/** One ranked feed item. */
data class Ranked(val rank: Int, val itemId: Long, val creatorId: Long?, val score: Double, val finalScore: Double,
                  val pClick: Double, val pFinish: Double, val pLike: Double)

/**
 * Order of candidate indices (top `k`) and the adjusted scores: creator penalty for skips / negative
 * comments in the last hour, freshness boost, then greedy MMR on the fused embeddings with a
 * per-creator cap over the top `window` positions, picked from the best 4 x window; below them the
 * adjusted score decides. A port of `apply_policy` in `edge_rec/policy.py` (the tests compare orders).
 */
fun applyPolicy(p: PostRankPolicy, score: DoubleArray, fused: Tensor?, creators: List<Long?>, agesH: DoubleArray,
                signals: Map<Long, Pair<Double, Double>>, kIn: Int?): Pair<IntArray, DoubleArray> {
    val n = score.size
    val k = if (kIn == null) n else kIn.coerceIn(0, n)
    val byScore = { s: DoubleArray -> (0 until n).sortedWith(compareBy<Int> { -s[it] }.thenBy { it }).toIntArray() }
    if (!p.enabled) return byScore(score).copyOf(k) to score.copyOf()
    val adj = DoubleArray(n) { i ->
        val c = creators[i]
        val pen = if (c != null && c in signals) signals.getValue(c).let { p.skipPenalty * it.first + p.negativePenalty * it.second } else 0.0
        score[i] - pen + p.freshnessBoost * exp(-agesH[i] / p.freshnessTauH)
    }
    val lo = adj.min()
    val hi = adj.max()
    val rel = DoubleArray(n) { if (hi > lo) (adj[it] - lo) / (hi - lo) else 1.0 }
    val ranked = byScore(adj)
    val window = minOf(k, p.window)
    val short = ranked.copyOf(minOf(n, 4 * window))
    val useMmr = fused != null && p.mmrLambda < 1.0
    val base = DoubleArray(short.size) { (if (useMmr) p.mmrLambda else 1.0) * rel[short[it]] }
    val cur = base.copyOf()
    val penMax = DoubleArray(short.size)
    var unit: Array<DoubleArray>? = null
    if (useMmr) {
        val d = fused!!.rowSize()
        unit = Array(short.size) { j ->
            val v = DoubleArray(d) { fused.data[short[j] * d + it].toDouble() }
            val norm = maxOf(sqrt(v.sumOf { it * it }), 1e-12)
            DoubleArray(d) { v[it] / norm }
        }
    }
    val perCreator = HashMap<Long, Int>()
    val chosen = ArrayList<Int>()
    while (chosen.size < window) {
        var j = -1
        for (i in cur.indices) if (cur[i] != Double.NEGATIVE_INFINITY && (j < 0 || cur[i] > cur[j])) j = i
        if (j < 0) break
        cur[j] = Double.NEGATIVE_INFINITY; base[j] = Double.NEGATIVE_INFINITY
        chosen += short[j]
        val c = creators[short[j]]
        if (p.maxPerCreator != null && c != null) {
            val cnt = (perCreator[c] ?: 0) + 1
            perCreator[c] = cnt
            if (cnt >= p.maxPerCreator) for (i in short.indices) if (creators[short[i]] == c) { cur[i] = Double.NEGATIVE_INFINITY; base[i] = Double.NEGATIVE_INFINITY }
        }
        if (useMmr) {
            val u = unit!!
            for (i in short.indices) {
                var dot = 0.0
                for (t in u[j].indices) dot += u[j][t] * u[i][t]
                penMax[i] = maxOf(penMax[i], (1.0 - p.mmrLambda) * dot)
                cur[i] = base[i] - penMax[i]
            }
        }
    }
    val taken = BooleanArray(n).also { t -> chosen.forEach { t[it] = true } }
    val order = (chosen + ranked.filter { !taken[it] }).take(k).toIntArray()
    return order to adj
}

/**
 * The phone-side loop: a verified bundle + one engine. `rerank` builds the features from the raw feed
 * and the local history, runs the model and applies the policy — what `edge_rec.runtime.Reranker` does.
 */
class Reranker(val bundle: Bundle, private val engine: InferenceEngine, var policy: PostRankPolicy = PostRankPolicy()) {
    private val features = FeatureAssembler(bundle)

    fun score(inputs: Map<String, Tensor>): Map<String, Tensor> = engine.run(inputs)

    fun rerank(cands: List<Candidate>, now: Double, history: List<Event>, historyTotal: Int? = null, k: Int? = null): List<Ranked> {
        if (cands.isEmpty()) return emptyList()
        val x = features.inputs(cands, now, history, historyTotal)
        val out = engine.run(x)
        val score = DoubleArray(cands.size) { out.getValue("score").data[it].toDouble() }
        if (score.any { !it.isFinite() }) throw EdgeRecException("the model produced non-finite scores for this feed; check its inputs.")
        val signals = HashMap<Long, Pair<Double, Double>>()
        for (e in history) {
            val c = e.creatorId ?: continue
            if (e.ts < now - 3600.0 || e.ts > now) continue
            val s = signals[c] ?: (0.0 to 0.0)
            signals[c] = (s.first + if (e.skip) 1.0 else 0.0) to (s.second + if (e.sentiment != null && e.sentiment < 0) 1.0 else 0.0)
        }
        val ages = DoubleArray(cands.size) { maxOf(now - cands[it].uploadTs, 0.0) / 3600.0 }
        val (order, adj) = applyPolicy(policy, score, out["fused"], cands.map { it.creatorId }, ages, signals, k)
        return order.mapIndexed { r, i ->
            Ranked(r + 1, cands[i].itemId, cands[i].creatorId, score[i], adj[i], out.getValue("p_click").data[i].toDouble(),
                   out.getValue("p_finish").data[i].toDouble(), out.getValue("p_like").data[i].toDouble())
        }
    }
}
