package edgerec.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * How the app's on-device store keeps an event's embeddings in one row: every modality, not just the
 * first (the reranker's history rows need each kept modality, as `edge_rec.state` keeps them).
 *
 * `names` is `"visual:64,audio:32"` (modality and length, in order); `blob` is their float32 values,
 * little-endian, concatenated. A row written by the first version of the store holds one bare name
 * (`"visual"`) and that modality's floats: it still reads.
 */
object EventCodec {
    fun encode(embeddings: Map<String, FloatArray>): Pair<String?, ByteArray?> {
        if (embeddings.isEmpty()) return null to null
        for (m in embeddings.keys) require(m.isNotEmpty() && ',' !in m && ':' !in m) { "modality name '$m' may not be empty or hold ',' or ':'" }
        val names = embeddings.entries.joinToString(",") { "${it.key}:${it.value.size}" }
        val buf = ByteBuffer.allocate(4 * embeddings.values.sumOf { it.size }).order(ByteOrder.LITTLE_ENDIAN)
        embeddings.values.forEach { v -> v.forEach { buf.putFloat(it) } }
        return names to buf.array()
    }

    /** The embeddings of a stored row; a row whose names and blob disagree is an [IllegalArgumentException] naming both. */
    fun decode(names: String?, blob: ByteArray?): Map<String, FloatArray> {
        if (names.isNullOrEmpty() || blob == null) return emptyMap()
        require(blob.size % 4 == 0) { "stored embeddings '$names': ${blob.size} bytes is not a whole number of floats" }
        val b = ByteBuffer.wrap(blob).order(ByteOrder.LITTLE_ENDIAN)
        if (':' !in names) return mapOf(names to FloatArray(blob.size / 4) { b.getFloat() })   // first-version row
        val parts = names.split(",").map { p ->
            val i = p.lastIndexOf(':')
            val n = p.substring(i + 1).toIntOrNull()
            require(i > 0 && n != null && n >= 0) { "stored embeddings '$names': '$p' is not modality:length" }
            p.substring(0, i) to n
        }
        require(parts.sumOf { it.second } * 4 == blob.size) { "stored embeddings '$names' need ${parts.sumOf { it.second } * 4} bytes, the row holds ${blob.size}" }
        return parts.associate { (m, n) -> m to FloatArray(n) { b.getFloat() } }
    }
}
