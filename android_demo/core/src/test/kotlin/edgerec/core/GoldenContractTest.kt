package edgerec.core

import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.nio.file.Files
import kotlin.math.abs

inline fun <reified T : Throwable> expectThrows(block: () -> Unit): T {
    try {
        block()
    } catch (e: Throwable) {
        if (e is T) return e
        throw AssertionError("expected ${T::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${T::class.simpleName}; nothing was thrown")
}

/**
 * The bundle's golden contract, run on the JVM with the real ONNX Runtime library: the same manifest
 * checks, the same features from the raw feed, the same scores (1e-5) and the same order as the Python
 * runtime. Paths come from system properties set by `android_demo/run_jvm_tests.sh`.
 */
class GoldenContractTest {
    private val bundleDir = File(System.getProperty("edgerec.bundle") ?: error("set -Dedgerec.bundle"))
    private val schema = JSONObject(File(System.getProperty("edgerec.schema")).readText())
    private val ortLib = System.getProperty("edgerec.ortlib")
    private val litertLib = System.getProperty("edgerec.litertlib")
    private val expected = JSONObject(File(System.getProperty("edgerec.expected")).readText())
    private val bundle = Bundle.open(bundleDir, schema)
    private val golden = JSONObject(File(bundleDir, "golden.json").readText()).getJSONArray("cases")
    private val feed = JSONObject(File(bundleDir, "sample_feed.json").readText())

    private fun tensor(o: JSONObject) = Tensor(o.getJSONArray("data").floats(), o.getJSONArray("shape").longs())
    private fun inputs(case: JSONObject): Map<String, Tensor> {
        val i = case.getJSONObject("inputs")
        return bundle.inputNames.associateWith { tensor(i.getJSONObject(it)) }
    }
    private fun cands() = feed.getJSONArray("candidates").let { a -> (0 until a.length()).map { candidateFromJson(a.getJSONObject(it)) } }
    private fun history() = feed.getJSONArray("history").let { a -> (0 until a.length()).map { eventFromJson(a.getJSONObject(it)) } }
    private fun assertClose(want: FloatArray, got: FloatArray, tol: Double, what: String) {
        assertEquals(want.size, got.size, "$what: length")
        val worst = want.indices.maxOfOrNull { abs(want[it] - got[it]).toDouble() } ?: 0.0
        assertTrue(worst <= tol, "$what: max abs difference $worst > $tol")
    }

    @Test
    fun `the manifest validates against the repo schema and a changed byte is named`() {
        assertTrue(SchemaValidator(schema).errors(bundle.manifest).isEmpty())
        val bad = JSONObject(bundle.manifest.toString()).put("schema_version", "2.0")
        assertTrue(SchemaValidator(schema).errors(bad).any { it.contains("schema_version") })
        val copy = Files.createTempDirectory("bundle").toFile()
        bundleDir.copyRecursively(copy)
        val target = bundle.group("onnx", "int8").first().path
        val f = File(copy, target)
        val bytes = f.readBytes().also { it[64] = (it[64].toInt() xor 0xff).toByte() }
        f.writeBytes(bytes)
        val e = expectThrows<EdgeRecException> { Bundle.open(copy, schema) }
        assertTrue(e.message!!.contains(target), e.message)
        copy.deleteRecursively()
    }

    @Test
    fun `features built from the raw feed equal the golden inputs`() {
        val x = FeatureAssembler(bundle).inputs(cands(), feed.getDouble("now"), history(),
            if (feed.has("history_total")) feed.getInt("history_total") else null)
        val want = inputs(golden.getJSONObject(0))
        for (name in bundle.inputNames) {
            assertEquals(want.getValue(name).shape.toList(), x.getValue(name).shape.toList(), "$name shape")
            assertClose(want.getValue(name).data, x.getValue(name).data, 1e-5, name)
        }
    }

    @Test
    fun `ONNX Runtime through JNA gives every onnx and ort file's golden outputs`() {
        var checked = 0
        for (a in bundle.artifacts.filter { it.format == "onnx" || it.format == "ort" }) {
            OrtJnaEngine(ortLib, File(bundleDir, a.path).path).use { eng ->
                for (c in 0 until golden.length()) {
                    val case = golden.getJSONObject(c)
                    val out = eng.run(inputs(case))
                    val want = case.getJSONObject("artifacts").getJSONObject(a.path)
                    for (k in listOf("score", "p_click", "p_finish", "p_like"))
                        assertClose(tensor(want.getJSONObject(k)).data, out.getValue(k).data, 1e-5, "${a.path} ${case.getString("name")} $k")
                    checked++
                }
            }
        }
        assertTrue(checked >= 4 * golden.length(), "expected fp32 and int8 .onnx and .ort files, checked $checked cases")
    }

    @Test
    fun `LiteRT through JNA gives every tflite bucket's golden outputs, and as one bucketed engine`() {
        var checked = 0
        for (prec in listOf("fp32", "int8")) {
            val group = bundle.group("tflite", prec)
            assertTrue(group.isNotEmpty(), "no tflite/$prec files in the bundle")
            val engines = group.associate { a -> a.bucket!! to LiteRtJnaEngine(litertLib, File(bundleDir, a.path).path) }
            try {
                for ((b, eng) in engines) assertEquals(b, eng.fixedN, "bucket read from the model")
                for (c in 0 until golden.length()) {
                    val case = golden.getJSONObject(c)
                    val x = inputs(case)
                    val n = x.getValue("cand_dense").rows
                    for (a in group) {                             // each file on its own, padded to its bucket
                        if (a.bucket!! < n) continue
                        val out = engines.getValue(a.bucket).run(x.mapValues { (k, t) -> if (k.startsWith("cand_")) padRows(t, a.bucket) else t })
                        val want = case.getJSONObject("artifacts").getJSONObject(a.path)
                        for (k in listOf("score", "p_click", "p_finish", "p_like"))
                            assertClose(tensor(want.getJSONObject(k)).data, sliceRows(out.getValue(k), 0, n).data, 1e-5, "${a.path} ${case.getString("name")} $k")
                        checked++
                    }
                    val all = Bucketed(engines).run(x)                 // the smallest bucket that fits
                    val chosen = group.filter { it.bucket!! >= n }.minByOrNull { it.bucket!! } ?: group.maxBy { it.bucket!! }
                    if (chosen.bucket!! >= n)
                        assertClose(tensor(case.getJSONObject("artifacts").getJSONObject(chosen.path).getJSONObject("score")).data,
                                    all.getValue("score").data, 1e-5, "bucketed ${chosen.path}")
                }
            } finally {
                engines.values.forEach { it.close() }
            }
        }
        assertTrue(checked >= 2 * golden.length(), "checked $checked bucket runs")
    }

    @Test
    fun `bucket padding and chunking change no real score`() {
        val path = File(bundleDir, bundle.group("onnx", "fp32").first().path).path
        OrtJnaEngine(ortLib, path).use { eng ->
            val x = inputs(golden.getJSONObject(0))
            val plain = eng.run(x).getValue("score").data
            val n = x.getValue("cand_dense").rows
            for (buckets in listOf(listOf(64), listOf(n + 3), listOf(maxOf(2, n / 3)))) {
                val padded = Bucketed(buckets.associateWith { eng as InferenceEngine }).run(x).getValue("score").data
                assertClose(plain, padded, 1e-5, "buckets $buckets")
            }
        }
    }

    @Test
    fun `rerank gives the Python runtime's order and scores, with the policy on and off`() {
        val path = File(bundleDir, bundle.group("onnx", "int8").first().path).path
        OrtJnaEngine(ortLib, path).use { eng ->
            val rr = Reranker(bundle, eng)
            for ((key, policy) in listOf("policy_on" to PostRankPolicy(), "policy_off" to PostRankPolicy(enabled = false))) {
                rr.policy = policy
                val got = rr.rerank(cands(), feed.getDouble("now"), history(),
                    if (feed.has("history_total")) feed.getInt("history_total") else null)
                val want = expected.getJSONArray(key)
                assertEquals((0 until want.length()).map { want.getJSONObject(it).getLong("item_id") }, got.map { it.itemId }, "$key order")
                for (i in got.indices) {
                    assertEquals(want.getJSONObject(i).getDouble("score"), got[i].score, 1e-5, "$key score at rank ${i + 1}")
                    assertEquals(want.getJSONObject(i).getDouble("final_score"), got[i].finalScore, 1e-5, "$key final score at rank ${i + 1}")
                }
            }
        }
    }

    @Test
    fun `bad feeds get clear errors`() {
        val fa = FeatureAssembler(bundle)
        val c = cands()
        val now = feed.getDouble("now")
        assertTrue(expectThrows<EdgeRecException> { fa.candidates(listOf(c[0], c[0]), now) }.message!!.contains("duplicate"))
        val m = bundle.modalities.keys.first()
        val wrong = c[0].copy(embeddings = mapOf(m to FloatArray(3)))
        assertTrue(expectThrows<EdgeRecException> { fa.candidates(listOf(wrong), now) }.message!!.contains("3 dims"))
        val nan = JSONObject().put("item_id", 1).put("embeddings", JSONObject().put(m, JSONObject().put("fp16_b64", "AH4=")))
        assertTrue(expectThrows<EdgeRecException> { candidateFromJson(nan) }.message!!.contains("NaN"))
        val unknown = c[0].copy(embeddings = mapOf("smell" to FloatArray(1)))
        assertTrue(expectThrows<EdgeRecException> { fa.candidates(listOf(unknown), now) }.message!!.contains("unknown modality"))
    }
}
