package edgerec.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import edgerec.core.InferenceEngine
import edgerec.core.Tensor
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.channels.FileChannel

/** ONNX Runtime Mobile (`ai.onnxruntime`, the onnxruntime-android AAR) on a bundle's `.ort` / `.onnx` file. */
class AndroidOrtEngine(model: File, threads: Int = 1) : InferenceEngine {
    override val name = "onnxruntime-android"
    override val fixedN: Int? = null
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession = env.createSession(model.path, OrtSession.SessionOptions().apply { setIntraOpNumThreads(threads) })

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        val feeds = inputs.mapValues { (_, t) -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.data), t.shape) }
        try {
            session.run(feeds).use { res ->
                return res.associate { (name, value) ->
                    val t = value as OnnxTensor
                    val buf = t.floatBuffer
                    name to Tensor(FloatArray(buf.remaining()).also { buf.get(it) }, t.info.shape)
                }
            }
        } finally {
            feeds.values.forEach { it.close() }
        }
    }

    override fun close() = session.close()
}

/**
 * LiteRT (`com.google.ai.edge.litert`, TFLite's Interpreter API) on one fixed-N `.tflite` bucket, through
 * its named signature; wrap the buckets in [edgerec.core.Bucketed] for any N.
 */
class LiteRtEngine(model: File, override val fixedN: Int, private val outputs: Map<String, LongArray>, threads: Int = 1) : InferenceEngine {
    override val name = "litert"
    private val interpreter = Interpreter(
        FileChannel.open(model.toPath()).use { it.map(FileChannel.MapMode.READ_ONLY, 0, it.size()) },
        Interpreter.Options().setNumThreads(threads))

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        val ins = inputs.mapValues { (_, t) -> direct(t.data) }
        val outs = outputs.mapValues { (_, shape) ->
            ByteBuffer.allocateDirect(4 * shape.fold(1L) { a, b -> a * b }.toInt()).order(ByteOrder.nativeOrder())
        }
        interpreter.runSignature(ins, outs)
        return outs.mapValues { (k, b) ->
            b.rewind()
            val fb = b.asFloatBuffer()
            Tensor(FloatArray(fb.remaining()).also { fb.get(it) }, outputs.getValue(k))
        }
    }

    private fun direct(a: FloatArray): ByteBuffer =
        ByteBuffer.allocateDirect(4 * a.size).order(ByteOrder.nativeOrder()).also { it.asFloatBuffer().put(a) }

    override fun close() = interpreter.close()
}
