package edgerec.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** The app store's row format keeps every modality of an event and reads first-version rows. */
class EventCodecTest {
    @Test
    fun everyModalityRoundTrips() {
        val e = linkedMapOf("visual" to FloatArray(64) { it * 0.5f - 3f }, "audio" to FloatArray(32) { -it.toFloat() / 7f })
        val (names, blob) = EventCodec.encode(e)
        assertEquals("visual:64,audio:32", names)
        assertEquals(4 * 96, blob!!.size)
        val back = EventCodec.decode(names, blob)
        assertEquals(listOf("visual", "audio"), back.keys.toList())
        for ((m, v) in e) assertArrayEquals(v, back[m], m)
        assertEquals(Pair(null, null), EventCodec.encode(emptyMap()))
        assertTrue(EventCodec.decode(null, null).isEmpty())
    }

    @Test
    fun aFirstVersionRowStillReads() {
        val v = floatArrayOf(1.5f, -2f, 0.25f)
        val blob = ByteBuffer.allocate(12).order(ByteOrder.LITTLE_ENDIAN).also { b -> v.forEach { b.putFloat(it) } }.array()
        assertArrayEquals(v, EventCodec.decode("visual", blob)["visual"])
    }

    @Test
    fun aRowThatDisagreesWithItsNamesIsAClearError() {
        val (names, stored) = EventCodec.encode(mapOf("visual" to FloatArray(4), "audio" to FloatArray(2)))
        val blob = stored!!
        val short = expectThrows<IllegalArgumentException> { EventCodec.decode(names, blob.copyOf(20)) }
        assertTrue("need 24 bytes, the row holds 20" in short.message!!, short.message)
        val odd = expectThrows<IllegalArgumentException> { EventCodec.decode(names, blob.copyOf(22)) }
        assertTrue("not a whole number of floats" in odd.message!!, odd.message)
        val bad = expectThrows<IllegalArgumentException> { EventCodec.decode("visual:x", ByteArray(4)) }
        assertTrue("is not modality:length" in bad.message!!, bad.message)
        expectThrows<IllegalArgumentException> { EventCodec.encode(mapOf("a,b" to FloatArray(1))) }
    }
}
