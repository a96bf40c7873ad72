package edgerec.core

import com.sun.jna.Memory
import com.sun.jna.NativeLibrary
import com.sun.jna.Pointer
import com.sun.jna.ptr.LongByReference
import com.sun.jna.ptr.PointerByReference

/**
 * LiteRT through its C API (`libLiteRt.so`, shipped in the ai-edge-litert wheel; the same library an
 * Android app loads), called with JNA: environment -> model -> compiled model (CPU / XNNPACK) ->
 * managed tensor buffers from the compiled model's requirements -> run on the model's one signature.
 * A `.tflite` bucket has a fixed N (read from its `cand_dense` buffer); wrap buckets in [Bucketed].
 */
class LiteRtJnaEngine(library: String, model: String) : InferenceEngine {
    private companion object {
        const val CPU = 1                    // kLiteRtHwAcceleratorCpu
        const val LOCK_READ = 0
        const val LOCK_WRITE = 1
        const val POINTER = 8L
    }

    override val name = "litert"
    private val lib = NativeLibrary.getInstance(library)
    private val env: Pointer
    private val modelH: Pointer
    private val options: Pointer
    private val compiled: Pointer
    val inputNames: List<String>
    val outputNames: List<String>
    private val inputs: List<Pair<Pointer, Long>>       // buffer, bytes
    private val outputs: List<Pair<Pointer, Long>>
    override val fixedN: Int

    init {
        env = out { call("LiteRtCreateEnvironment", 0, null, it) }
        modelH = out { call("LiteRtCreateModelFromFile", env, model, it) }
        options = out { call("LiteRtCreateOptions", it) }
        call("LiteRtSetOptionsHardwareAccelerators", options, CPU)
        compiled = out { call("LiteRtCreateCompiledModel", env, modelH, options, it) }
        val sig = out { call("LiteRtGetModelSignature", modelH, 0L, it) }
        fun names(count: String, name: String): List<String> {
            val n = LongByReference().also { call(count, sig, it) }.value
            return (0 until n).map { i -> out { call(name, sig, i, it) }.getString(0) }
        }
        inputNames = names("LiteRtGetNumSignatureInputs", "LiteRtGetSignatureInputName")
        outputNames = names("LiteRtGetNumSignatureOutputs", "LiteRtGetSignatureOutputName")
        fun buffers(kind: String, count: Int): List<Pair<Pointer, Long>> = (0 until count).map { i ->
            val tensor = out { call("LiteRtGetSignature${kind}TensorByIndex", sig, i.toLong(), it) }
            val type = Memory(256).also { it.clear() }              // LiteRtRankedTensorType, filled by LiteRT
            call("LiteRtGetRankedTensorType", tensor, type)
            val req = out { call("LiteRtGetCompiledModel${kind}BufferRequirements", compiled, 0L, i.toLong(), it) }
            val buf = out { call("LiteRtCreateManagedTensorBufferFromRequirements", env, type, req, it) }
            buf to LongByReference().also { call("LiteRtGetTensorBufferPackedSize", buf, it) }.value
        }
        inputs = buffers("Input", inputNames.size)
        outputs = buffers("Output", outputNames.size)
        fixedN = (inputs[inputNames.indexOf("cand_dense")].second / (3 * 4)).toInt()
    }

    private fun call(fn: String, vararg args: Any?) {
        val status = lib.getFunction(fn).invokeInt(args)
        if (status != 0) throw EdgeRecException("LiteRT: $fn returned status $status")
    }

    private inline fun out(block: (PointerByReference) -> Unit): Pointer = PointerByReference().also(block).value

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        inputNames.forEachIndexed { i, name ->
            val t = inputs[name] ?: throw EdgeRecException("input '$name' is missing (have ${inputs.keys}).")
            val (buf, bytes) = this.inputs[i]
            if (t.data.size * 4L != bytes) throw EdgeRecException("input '$name' holds ${t.data.size} floats; this model (N=$fixedN) needs ${bytes / 4}.")
            val addr = out { call("LiteRtLockTensorBuffer", buf, it, LOCK_WRITE) }
            addr.write(0, t.data, 0, t.data.size)
            call("LiteRtUnlockTensorBuffer", buf)
        }
        val inArr = Memory(POINTER * this.inputs.size).also { m -> this.inputs.forEachIndexed { i, b -> m.setPointer(i * POINTER, b.first) } }
        val outArr = Memory(POINTER * outputs.size).also { m -> outputs.forEachIndexed { i, b -> m.setPointer(i * POINTER, b.first) } }
        call("LiteRtRunCompiledModel", compiled, 0L, this.inputs.size.toLong(), inArr, outputs.size.toLong(), outArr)
        return outputNames.withIndex().associate { (i, name) ->
            val (buf, bytes) = outputs[i]
            val addr = out { call("LiteRtLockTensorBuffer", buf, it, LOCK_READ) }
            val data = addr.getFloatArray(0, (bytes / 4).toInt())
            call("LiteRtUnlockTensorBuffer", buf)
            val width = data.size / fixedN
            name to Tensor(data, if (width == 1) longArrayOf(fixedN.toLong()) else longArrayOf(fixedN.toLong(), width.toLong()))
        }
    }

    override fun close() {
        for ((b, _) in inputs + outputs) lib.getFunction("LiteRtDestroyTensorBuffer").invokeVoid(arrayOf(b))
        lib.getFunction("LiteRtDestroyCompiledModel").invokeVoid(arrayOf(compiled))
        lib.getFunction("LiteRtDestroyOptions").invokeVoid(arrayOf(options))
        lib.getFunction("LiteRtDestroyModel").invokeVoid(arrayOf(modelH))
        lib.getFunction("LiteRtDestroyEnvironment").invokeVoid(arrayOf(env))
    }
}
