package edgerec.demo

import android.content.ContentValues
import android.content.Context
import android.database.sqlite.SQLiteDatabase
import android.database.sqlite.SQLiteOpenHelper
import edgerec.core.Event
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The viewer's behaviour on the device: SQLite in WAL mode, like `edge_rec.state.UserState`. Nothing
 * here is ever sent anywhere; `forget()` deletes it all.
 */
class EventStore(context: Context) : SQLiteOpenHelper(context, "edge_rec_state.db", null, 1) {
    init { setWriteAheadLoggingEnabled(true) }

    override fun onCreate(db: SQLiteDatabase) {
        db.execSQL("""CREATE TABLE events (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, creator_id INTEGER,
            ts REAL NOT NULL, watch_ms REAL, duration_ms REAL, like_ INTEGER, skip INTEGER, emb_name TEXT, emb BLOB)""")
    }

    override fun onUpgrade(db: SQLiteDatabase, oldVersion: Int, newVersion: Int) = Unit

    fun record(e: Event) {
        val (name, vec) = e.embeddings.entries.firstOrNull()?.let { it.key to it.value } ?: (null to null)
        writableDatabase.insert("events", null, ContentValues().apply {
            put("item_id", e.itemId); put("creator_id", e.creatorId); put("ts", e.ts); put("watch_ms", e.watchMs)
            put("duration_ms", e.durationMs); put("like_", if (e.like) 1 else 0); put("skip", if (e.skip) 1 else 0)
            put("emb_name", name)
            put("emb", vec?.let { v -> ByteBuffer.allocate(4 * v.size).order(ByteOrder.LITTLE_ENDIAN).also { b -> v.forEach { b.putFloat(it) } }.array() })
        })
    }

    /** The newest `limit` events, oldest first. */
    fun events(limit: Int): List<Event> = readableDatabase.rawQuery(
        "SELECT item_id, creator_id, ts, watch_ms, duration_ms, like_, skip, emb_name, emb FROM events ORDER BY ts DESC LIMIT ?",
        arrayOf(limit.toString())).use { c ->
        buildList {
            while (c.moveToNext()) {
                val emb = if (c.isNull(8)) emptyMap() else {
                    val b = ByteBuffer.wrap(c.getBlob(8)).order(ByteOrder.LITTLE_ENDIAN)
                    mapOf(c.getString(7) to FloatArray(b.remaining() / 4) { b.getFloat() })
                }
                add(Event(c.getLong(0), c.getDouble(2), c.getDouble(3), c.getDouble(4), c.getInt(5) == 1, c.getInt(6) == 1,
                          if (c.isNull(1)) null else c.getLong(1), null, emb))
            }
        }.reversed()
    }

    fun forget() { writableDatabase.delete("events", null, null); writableDatabase.execSQL("VACUUM") }
}
