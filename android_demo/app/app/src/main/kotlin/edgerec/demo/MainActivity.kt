package edgerec.demo

import android.app.Activity
import android.graphics.Color
import android.os.Bundle as AndroidBundle
import android.view.GestureDetector
import android.view.MotionEvent
import android.widget.Button
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import edgerec.core.Bucketed
import edgerec.core.Bundle
import edgerec.core.Candidate
import edgerec.core.Event
import edgerec.core.InferenceEngine
import edgerec.core.Ranked
import edgerec.core.Reranker
import edgerec.core.candidateFromJson
import edgerec.core.eventFromJson
import org.json.JSONObject
import java.io.File

/**
 * The whole loop on the phone: the bundle shipped as assets (verified on first start) -> features from
 * the feed and the local history -> a real engine -> the reranked feed -> a swipe or a double tap is
 * recorded in the on-device store and the rest of the feed is reranked. The feed itself is the
 * bundle's `sample_feed.json` (what a server would send); the clock advances 20 s per swipe.
 */
class MainActivity : Activity() {
    private lateinit var reranker: Reranker
    private lateinit var store: EventStore
    private lateinit var remaining: MutableList<Candidate>
    private var now = 0.0
    private var ranking: List<Ranked> = emptyList()
    private lateinit var nowView: TextView
    private lateinit var nextView: TextView

    override fun onCreate(state: AndroidBundle?) {
        super.onCreate(state)
        val dir = copyAssets("bundle")
        val schema = JSONObject(assets.open("bundle.schema.json").bufferedReader().readText())
        val bundle = Bundle.open(dir, schema)                      // checksums and schema, as in Python
        reranker = Reranker(bundle, openEngine(bundle, dir))
        store = EventStore(this)
        val feed = JSONObject(File(dir, "sample_feed.json").readText())
        remaining = feed.getJSONArray("candidates").let { a -> (0 until a.length()).map { candidateFromJson(a.getJSONObject(it)) } }.toMutableList()
        now = feed.getDouble("now")
        if (store.events(1).isEmpty()) {                          // first start: the viewer's past from the sample
            val h = feed.getJSONArray("history")
            for (i in 0 until h.length()) store.record(eventFromJson(h.getJSONObject(i)))
        }
        buildUi()
        rerank()
    }

    /** ONNX Runtime on the int8 `.ort` file when it passed its gates, else LiteRT on the `.tflite` buckets. */
    private fun openEngine(b: Bundle, dir: File): InferenceEngine {
        val ort = b.group("ort", "int8").firstOrNull()?.takeIf { b.passed("ort", "int8") } ?: b.group("ort", "fp32").firstOrNull()
        if (ort != null) return AndroidOrtEngine(File(dir, ort.path))
        val outs = b.manifest.getJSONObject("signature").getJSONArray("outputs")
        val buckets = b.group("tflite", "int8").ifEmpty { b.group("tflite", "fp32") }
        return Bucketed(buckets.associate { a ->
            val n = a.bucket!!.toLong()
            val shapes = (0 until outs.length()).associate { i ->
                val o = outs.getJSONObject(i)
                val dims = o.getJSONArray("shape")
                o.getString("name") to LongArray(dims.length()) { j -> if (dims.get(j) is String) n else dims.getLong(j) }
            }
            a.bucket to LiteRtEngine(File(dir, a.path), a.bucket, shapes) as InferenceEngine
        })
    }

    private fun rerank() {
        ranking = reranker.rerank(remaining, now, store.events(reranker.bundle.histLen), k = 20)
        val top = ranking.firstOrNull()
        nowView.text = top?.let { "item ${it.itemId}\ncreator ${it.creatorId}\nclick ${(100 * it.pClick).toInt()} % · finish ${(100 * it.pFinish).toInt()} %" } ?: "that's the feed"
        nowView.setBackgroundColor(Color.HSVToColor(floatArrayOf(((top?.itemId ?: 0) * 37 % 360).toFloat(), 0.5f, 0.45f)))
        nextView.text = ranking.drop(1).joinToString("\n") { "#${it.rank}  item ${it.itemId} · creator ${it.creatorId} · ${"%.3f".format(it.finalScore)}" }
    }

    private fun feedback(like: Boolean) {
        val top = ranking.firstOrNull() ?: return
        val c = remaining.first { it.itemId == top.itemId }
        val dur = c.durationS * 1000
        store.record(Event(c.itemId, now, if (like) dur else minOf(1000.0, dur), dur, like, !like, c.creatorId, null, c.embeddings))
        remaining.remove(c)
        now += 20.0
        rerank()
    }

    private fun buildUi() {
        val root = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setBackgroundColor(Color.rgb(16, 16, 20)) }
        nowView = TextView(this).apply { textSize = 22f; setTextColor(Color.WHITE); setPadding(40, 400, 40, 40) }
        val swipe = GestureDetector(this, object : GestureDetector.SimpleOnGestureListener() {
            override fun onFling(e1: MotionEvent?, e2: MotionEvent, vx: Float, vy: Float): Boolean {
                if (e1 != null && e1.y - e2.y > 120) feedback(like = false)
                return true
            }
            override fun onDoubleTap(e: MotionEvent): Boolean { feedback(like = true); return true }
            override fun onDown(e: MotionEvent) = true
        })
        nowView.setOnTouchListener { _, ev -> swipe.onTouchEvent(ev) }
        val buttons = LinearLayout(this).apply {
            addView(Button(context).apply { text = "skip"; setOnClickListener { feedback(like = false) } })
            addView(Button(context).apply { text = "like"; setOnClickListener { feedback(like = true) } })
            addView(Button(context).apply { text = "forget me"; setOnClickListener { store.forget(); rerank() } })
        }
        nextView = TextView(this).apply { setTextColor(Color.LTGRAY); setPadding(40, 20, 40, 40) }
        root.addView(nowView)
        root.addView(buttons)
        root.addView(ScrollView(this).apply { addView(nextView) })
        setContentView(root)
    }

    /** Assets are read-only streams; the verifier and the engines want files: copy once into app storage. */
    private fun copyAssets(path: String): File {
        val out = File(filesDir, path)
        for (name in assets.list(path).orEmpty()) {
            val sub = "$path/$name"
            if (assets.list(sub).orEmpty().isNotEmpty()) { copyAssets(sub); continue }
            val f = File(filesDir, sub)
            f.parentFile?.mkdirs()
            if (!f.exists()) assets.open(sub).use { i -> f.outputStream().use { i.copyTo(it) } }
        }
        return out
    }
}
