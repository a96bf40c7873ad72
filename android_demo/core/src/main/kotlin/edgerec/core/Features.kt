package edgerec.core

import org.json.JSONArray
import org.json.JSONObject
import java.util.Base64
import kotlin.math.PI
import kotlin.math.cos
import kotlin.math.ln1p
import kotlin.math.max
import kotlin.math.min
import kotlin.math.sin

/** A float32 tensor, row-major. */
class Tensor(val data: FloatArray, val shape: LongArray) {
    val rows: Int get() = shape[0].toInt()
    fun rowSize(): Int = if (shape.size == 1) 1 else (1 until shape.size).fold(1) { a, i -> a * shape[i].toInt() }
}

/** One feed item as the server sends it (`sample_feed.json`'s `candidates`). */
data class Candidate(val itemId: Long, val creatorId: Long?, val durationS: Double, val uploadTs: Double,
                     val clicks: Double, val embeddings: Map<String, FloatArray>)

/** One on-device behaviour event (what the local store keeps). */
data class Event(val itemId: Long, val ts: Double, val watchMs: Double, val durationMs: Double, val like: Boolean,
                 val skip: Boolean, val creatorId: Long?, val sentiment: Double?, val embeddings: Map<String, FloatArray>) {
    val watchRatio: Double get() = if (durationMs > 0) watchMs / durationMs else 0.0
}

/** Embedding as a float list, `{"int8": [...], "scale": s}` or `{"fp16_b64": "..."}` (as the runtime reads them). */
fun decodeEmbedding(v: Any, where: String): FloatArray {
    val out = when (v) {
        is JSONArray -> v.floats()
        is JSONObject -> when {
            v.has("int8") -> { val s = v.optNumber("scale", 1.0); v.getJSONArray("int8").let { a -> FloatArray(a.length()) { (a.getInt(it) * s).toFloat() } } }
            v.has("fp16_b64") -> { val b = Base64.getDecoder().decode(v.getString("fp16_b64"))
                FloatArray(b.size / 2) { i -> halfToFloat((b[2 * i].toInt() and 0xff) or ((b[2 * i + 1].toInt() and 0xff) shl 8)) } }
            else -> throw EdgeRecException("$where: an embedding object needs 'int8' + 'scale' or 'fp16_b64'.")
        }
        else -> throw EdgeRecException("$where: embedding is not a list or an object.")
    }
    if (out.any { !it.isFinite() }) throw EdgeRecException("$where: embedding holds NaN or inf; the server sent a broken vector.")
    return out
}

/** IEEE 754 half (16 bits, little-endian as numpy writes it) to float, subnormals, inf and NaN included. */
fun halfToFloat(h: Int): Float {
    val sign = if (h and 0x8000 != 0) -1f else 1f
    val exp = (h shr 10) and 0x1f
    val frac = h and 0x3ff
    return when (exp) {
        0 -> sign * frac * 5.9604645e-8f                        // 2^-24
        31 -> if (frac == 0) sign * Float.POSITIVE_INFINITY else Float.NaN
        else -> sign * java.lang.Float.intBitsToFloat(((exp + 112) shl 23) or (frac shl 13))
    }
}

private fun embeddings(o: JSONObject, where: String): Map<String, FloatArray> {
    if (!o.has("embeddings")) return emptyMap()
    val e = o.getJSONObject("embeddings")
    val out = LinkedHashMap<String, FloatArray>()
    val keys = e.keys()
    while (keys.hasNext()) { val k = keys.next() as String; if (!e.isNull(k)) out[k] = decodeEmbedding(e.get(k), "$where modality '$k'") }
    return out
}

fun candidateFromJson(o: JSONObject): Candidate {
    if (!o.has("item_id")) throw EdgeRecException("a candidate has no item_id.")
    val id = o.getLong("item_id")
    return Candidate(id, if (o.isNull("creator_id") || !o.has("creator_id")) null else o.getLong("creator_id"),
        o.optNumber("duration_s", 0.0), o.optNumber("upload_ts", 0.0), o.optNumber("clicks", 0.0), embeddings(o, "candidate $id"))
}

fun eventFromJson(o: JSONObject): Event {
    if (!o.has("item_id") || !o.has("ts")) throw EdgeRecException("a history event lacks item_id or ts.")
    val id = o.getLong("item_id")
    return Event(id, o.getDouble("ts"), o.optNumber("watch_ms", 0.0), o.optNumber("duration_ms", 0.0),
        o.optBoolean("like", false), o.optBoolean("skip", false),
        if (!o.has("creator_id") || o.isNull("creator_id")) null else o.getLong("creator_id"),
        if (!o.has("sentiment") || o.isNull("sentiment")) null else o.getDouble("sentiment"), embeddings(o, "history item $id"))
}

/**
 * Model inputs from raw feed fields, exactly as training built them: the constants come from the
 * manifest's `features` section (the Python runtime does the same; the golden file pins both).
 * Shapes: `cand_<m>` [N, d_m], `cand_mask_<m>` [N], `cand_dense` [N, 3], `hist_emb` [L, d_h],
 * `hist_weight` [L], `hist_age` [L], `context` [3].
 */
class FeatureAssembler(private val bundle: Bundle) {
    private val f = bundle.manifest.getJSONObject("features").getJSONObject("cand_dense")
    private val durMean = f.getJSONObject("duration").getDouble("mean")
    private val durStd = f.getJSONObject("duration").getDouble("std")
    private val freshShift = f.getJSONObject("freshness").getDouble("shift")
    private val freshScale = f.getJSONObject("freshness").getDouble("scale")
    private val popMean = f.getJSONObject("popularity").getDouble("mean")
    private val popStd = f.getJSONObject("popularity").getDouble("std")
    private val histDim = bundle.modalities.values.sum() + 3

    fun candidates(cands: List<Candidate>, now: Double): Map<String, Tensor> {
        val n = cands.size
        val ids = HashSet<Long>()
        for (c in cands) if (!ids.add(c.itemId)) throw EdgeRecException("duplicate item id ${c.itemId} in the feed; send each item once.")
        val out = LinkedHashMap<String, Tensor>()
        for ((m, d) in bundle.modalities) {
            val emb = FloatArray(n * d)
            val mask = FloatArray(n)
            cands.forEachIndexed { i, c ->
                val v = c.embeddings[m] ?: return@forEachIndexed
                if (v.size != d) throw EdgeRecException("candidate ${c.itemId}: modality '$m' has ${v.size} dims; the bundle expects $d.")
                System.arraycopy(v, 0, emb, i * d, d)
                mask[i] = 1f
            }
            out["cand_$m"] = Tensor(emb, longArrayOf(n.toLong(), d.toLong()))
            out["cand_mask_$m"] = Tensor(mask, longArrayOf(n.toLong()))
        }
        for (c in cands) for (m in c.embeddings.keys)
            if (m !in bundle.modalities && m !in bundle.pruned)
                throw EdgeRecException("candidate ${c.itemId}: unknown modality '$m'; this bundle knows ${bundle.modalities.keys}.")
        val dense = FloatArray(n * 3)
        cands.forEachIndexed { i, c ->
            if (!c.durationS.isFinite() || !c.uploadTs.isFinite() || !c.clicks.isFinite() || c.durationS < 0 || c.clicks < 0)
                throw EdgeRecException("candidate ${c.itemId}: duration_s, upload_ts and clicks must be finite (and duration, clicks >= 0).")
            dense[3 * i] = ((ln1p(c.durationS) - durMean) / durStd).toFloat()
            dense[3 * i + 1] = ((ln1p(max(now - c.uploadTs, 0.0) / 3600.0) - freshShift) / freshScale).toFloat()
            dense[3 * i + 2] = ((ln1p(c.clicks) - popMean) / popStd).toFloat()
        }
        out["cand_dense"] = Tensor(dense, longArrayOf(n.toLong(), 3))
        return out
    }

    fun history(history: List<Event>, now: Double, total: Int?): Map<String, Tensor> {
        val l = bundle.histLen
        val past = history.filter { it.ts < now }
        val last = past.takeLast(l)
        val emb = FloatArray(l * histDim)
        val weight = FloatArray(l)
        val age = FloatArray(l)
        val off = l - last.size
        last.forEachIndexed { j, e ->
            val row = (off + j) * histDim
            var o = 0
            for ((m, d) in bundle.modalities) {
                val v = e.embeddings[m]
                if (v != null && v.size == d) System.arraycopy(v, 0, emb, row + o, d)
                o += d
            }
            emb[row + o] = min(max(e.watchRatio, 0.0), 1.5).toFloat()
            emb[row + o + 1] = if (e.like) 1f else 0f
            emb[row + o + 2] = if (e.skip) 1f else 0f
            weight[off + j] = 1f
            age[off + j] = ln1p(max(now - e.ts, 0.0) / 3600.0).toFloat()
        }
        val hour = (now % 86400.0) / 86400.0 * 2 * PI
        val ctx = floatArrayOf(ln1p((total ?: past.size).toDouble()).toFloat(), sin(hour).toFloat(), cos(hour).toFloat())
        return linkedMapOf("hist_emb" to Tensor(emb, longArrayOf(l.toLong(), histDim.toLong())),
            "hist_weight" to Tensor(weight, longArrayOf(l.toLong())), "hist_age" to Tensor(age, longArrayOf(l.toLong())),
            "context" to Tensor(ctx, longArrayOf(3)))
    }

    fun inputs(cands: List<Candidate>, now: Double, history: List<Event>, total: Int?): Map<String, Tensor> {
        val all = candidates(cands, now) + history(history, now, total)
        return bundle.inputNames.associateWith { all[it] ?: throw EdgeRecException("the model needs input '$it' that the feed cannot provide.") }
    }
}
