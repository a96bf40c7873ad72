package edgerec.core

/** Named float32 inputs -> named outputs; the contract every engine (ONNX Runtime, LiteRT, ...) keeps. */
interface InferenceEngine : AutoCloseable {
    val name: String
    /** The candidate count a fixed-shape model needs; null = dynamic N. */
    val fixedN: Int?
    fun run(inputs: Map<String, Tensor>): Map<String, Tensor>
}

/**
 * Fixed-N models (TFLite / Core ML buckets) as one dynamic-N engine: a request runs on the smallest
 * bucket >= N, padded by repeating the last real candidate (so int8 models with dynamic activation
 * ranges see no new min or max); feeds beyond the biggest bucket are scored in chunks.
 */
class Bucketed(private val engines: Map<Int, InferenceEngine>) : InferenceEngine {
    private val buckets = engines.keys.sorted()
    override val name = engines.values.first().name
    override val fixedN: Int? = null

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        val n = inputs.getValue("cand_dense").rows
        val big = buckets.last()
        val parts = ArrayList<Map<String, Tensor>>()
        var lo = 0
        while (lo < maxOf(n, 1)) {
            val hi = minOf(n, lo + big)
            val b = buckets.first { it >= hi - lo }
            val chunk = inputs.mapValues { (k, t) -> if (k.startsWith("cand_")) padRows(sliceRows(t, lo, hi), b) else t }
            parts += engines.getValue(b).run(chunk).mapValues { (_, t) -> sliceRows(t, 0, hi - lo) }
            lo += big
        }
        return parts[0].keys.associateWith { k -> concatRows(parts.map { it.getValue(k) }) }
    }

    override fun close() = engines.values.forEach { it.close() }
}

fun sliceRows(t: Tensor, lo: Int, hi: Int): Tensor {
    val r = t.rowSize()
    return Tensor(t.data.copyOfRange(lo * r, hi * r), t.shape.copyOf().also { it[0] = (hi - lo).toLong() })
}

/** Pad to `n` rows by repeating the last row (see [Bucketed]). */
fun padRows(t: Tensor, n: Int): Tensor {
    if (t.rows >= n || t.rows == 0) return t
    val r = t.rowSize()
    val out = t.data.copyOf(n * r)
    for (i in t.rows until n) System.arraycopy(t.data, (t.rows - 1) * r, out, i * r, r)
    return Tensor(out, t.shape.copyOf().also { it[0] = n.toLong() })
}

fun concatRows(ts: List<Tensor>): Tensor {
    if (ts.size == 1) return ts[0]
    val data = FloatArray(ts.sumOf { it.data.size })
    var o = 0
    for (t in ts) { System.arraycopy(t.data, 0, data, o, t.data.size); o += t.data.size }
    return Tensor(data, ts[0].shape.copyOf().also { it[0] = ts.sumOf { t -> t.rows }.toLong() })
}
