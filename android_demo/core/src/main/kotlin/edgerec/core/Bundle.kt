package edgerec.core

import org.json.JSONObject
import java.io.File
import java.security.MessageDigest

/** One model file of the bundle: its format, precision and fixed candidate bucket (null = dynamic N). */
data class Artifact(val format: String, val precision: String, val path: String, val bucket: Int?)

/**
 * A verified edge bundle (the folder `edge-rec export` writes): the manifest checked against the
 * repo's JSON Schema, its major version, and the size and sha256 of every listed file — the same checks
 * as the Python runtime's `verify_bundle`, with every problem named.
 */
class Bundle private constructor(val root: File, val manifest: JSONObject) {
    val inputNames: List<String> = manifest.getJSONObject("signature").getJSONArray("inputs").let { a ->
        (0 until a.length()).map { a.getJSONObject(it).getString("name") } }
    val outputNames: List<String> = manifest.getJSONObject("signature").getJSONArray("outputs").let { a ->
        (0 until a.length()).map { a.getJSONObject(it).getString("name") } }
    /** kept modality -> embedding dim, in the manifest's order (the history layout follows it). */
    val modalities: LinkedHashMap<String, Int> = LinkedHashMap<String, Int>().also { m ->
        val dims = manifest.getJSONObject("modalities").getJSONObject("dims")
        for (k in manifest.getJSONObject("modalities").getJSONArray("kept").strings()) m[k] = dims.getInt(k)
    }
    val pruned: Set<String> = manifest.getJSONObject("modalities").getJSONArray("pruned").strings().toSet()
    val histLen: Int = manifest.getJSONObject("model").getInt("hist_len")
    val artifacts: List<Artifact> = manifest.getJSONArray("artifacts").let { a ->
        (0 until a.length()).map { a.getJSONObject(it) }.map {
            Artifact(it.getString("format"), it.getString("precision"), it.getString("path"),
                     if (it.isNull("bucket")) null else it.getInt("bucket"))
        }
    }

    /** Files of one (format, precision), e.g. ("onnx", "int8") or the TFLite buckets. */
    fun group(format: String, precision: String): List<Artifact> =
        artifacts.filter { it.format == format && it.precision == precision }

    /** Whether this export passed its parity gates at export time. */
    fun passed(format: String, precision: String): Boolean {
        val parity = manifest.getJSONObject("parity")
        val f = if (format == "ort") "onnx" else format
        return parity.has(f) && parity.getJSONObject(f).has(precision) &&
            parity.getJSONObject(f).getJSONObject(precision).optBoolean("passed", false)
    }

    companion object {
        const val READS_MAJOR = "1"

        /** Open and verify `root`; `schema` is `edge_rec/bundle.schema.json` (the one the Python runtime uses). */
        fun open(root: File, schema: JSONObject): Bundle {
            val mf = File(root, "manifest.json")
            if (!mf.isFile) throw EdgeRecException("$root is not an edge bundle: no manifest.json. Point at the folder `edge-rec export` wrote.")
            val manifest = try { JSONObject(mf.readText()) } catch (e: Exception) {
                throw EdgeRecException("$mf is not valid JSON (${e.message}); re-export the bundle.")
            }
            val problems = SchemaValidator(schema).errors(manifest).toMutableList()
            if (problems.isNotEmpty()) throw EdgeRecException("$mf does not match the bundle schema:\n  " + problems.joinToString("\n  "))
            val major = manifest.getString("schema_version").substringBefore(".")
            if (major != READS_MAJOR) throw EdgeRecException(
                "bundle schema version ${manifest.getString("schema_version")} is not readable by this runtime (reads $READS_MAJOR.x); update the app or re-export.")
            val files = manifest.getJSONArray("files")
            for (i in 0 until files.length()) {
                val f = files.getJSONObject(i)
                val p = File(root, f.getString("path"))
                if (!p.isFile) { problems += "${f.getString("path")}: missing"; continue }
                if (p.length() != f.getLong("size")) problems += "${f.getString("path")}: size ${p.length()} bytes, manifest says ${f.getLong("size")}"
                val digest = sha256(p)
                if (digest != f.getString("sha256")) problems += "${f.getString("path")}: sha256 ${digest.take(12)}… does not match the manifest's ${f.getString("sha256").take(12)}…"
            }
            if (problems.isNotEmpty()) throw EdgeRecException("bundle $root failed verification:\n  " + problems.joinToString("\n  "))
            return Bundle(root, manifest)
        }

        fun sha256(f: File): String {
            val md = MessageDigest.getInstance("SHA-256")
            f.inputStream().use { s ->
                val buf = ByteArray(1 shl 16)
                while (true) { val n = s.read(buf); if (n < 0) break; md.update(buf, 0, n) }
            }
            return md.digest().joinToString("") { "%02x".format(it) }
        }
    }
}
