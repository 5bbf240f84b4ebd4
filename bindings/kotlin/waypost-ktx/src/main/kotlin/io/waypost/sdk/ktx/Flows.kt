package io.waypost.sdk.ktx

import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerListener
import io.waypost.sdk.ChatListener
import io.waypost.sdk.ConnectionStateListener
import io.waypost.sdk.Driver
import io.waypost.sdk.DriverListener
import io.waypost.sdk.HealthListener
import io.waypost.sdk.LocationListener
import io.waypost.sdk.OrderListener
import io.waypost.sdk.Subscription
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.ChatEvent
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.types.DriverEvent
import io.waypost.sdk.types.DriverHealth
import io.waypost.sdk.types.DriverStatusUpdate
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.types.OrderEntry
import io.waypost.sdk.types.PresenceUpdate
import io.waypost.sdk.types.ReceiptUpdate
import io.waypost.sdk.types.TrailUpdate
import io.waypost.sdk.types.TypingUpdate
import java.util.Collections
import java.util.WeakHashMap
import kotlinx.coroutines.channels.BufferOverflow
import kotlinx.coroutines.channels.ProducerScope
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.conflate
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.map

/*
 * Kotlin coroutines over the Waypost SDK. Every Flow here is cold: each
 * collection opens its own core subscription (`trackDriver(id, listener)`,
 * `joinChat(room, listener)`, ...) and cancelling the collection (or the
 * collector throwing) closes it, which removes the listener at once and
 * ends the wire subscription when no other subscription wants the channel.
 * The SDK calls back on its own threads and only `trySend`s into the
 * Flow's channel, so a slow or throwing collector never blocks or breaks
 * the SDK, and other collectors keep receiving.
 *
 * Buffer policy (per collector):
 *  - locations: conflated, the collector sees the newest position;
 *  - chat events and order updates: up to [WaypostFlows.CHAT_BUFFER] /
 *    [WaypostFlows.ORDER_BUFFER] wait; a collector that falls further behind
 *    fails with [StreamOverflowException] (nothing is dropped silently:
 *    re-read `messages(room, limit)` and collect again);
 *  - driver events: the newest [WaypostFlows.EVENT_BUFFER] are kept, older
 *    ones dropped (they are progress reports; `stats()` has the totals);
 *  - driver updates (positions, dead-zone trails, online/offline): up to
 *    [WaypostFlows.DRIVER_BUFFER] wait, then the collector fails with
 *    [StreamOverflowException] (a trail must not be dropped);
 *  - health: conflated, the collector sees the newest report;
 *  - connection state: a [StateFlow] (the newest state).
 */

/** Buffer sizes of the Flows (per collector). */
object WaypostFlows {
    const val CHAT_BUFFER: Int = 1_024
    const val ORDER_BUFFER: Int = 256
    const val EVENT_BUFFER: Int = 256
    const val DRIVER_BUFFER: Int = 256
}

/** A collector fell more than [capacity] items behind a stream that must not drop. */
class StreamOverflowException(what: String, val capacity: Int) :
    IllegalStateException("$what: collector fell more than $capacity items behind")

/** The server refused a subscription (`code`, e.g. `forbidden`). */
class SubscriptionRefusedException(val reference: String, val code: String, message: String) :
    IllegalStateException("$reference refused: $code: $message")

/** Sends [item]; closes the flow with an overflow error when its bounded buffer is full. */
private fun <T> ProducerScope<T>.offerOrFail(what: String, capacity: Int, item: T) {
    val r = trySend(item)
    if (r.isFailure && !r.isClosed) close(StreamOverflowException(what, capacity))
}

/** Ends [sub] in the core and frees its handle. */
private fun Subscription.end() {
    cancel()
    close()
}

/**
 * Positions of one driver: its newest known position first (when there is
 * one), then every newer fix, across reconnects; conflated. Fails with
 * [SubscriptionRefusedException] when the server refuses the subscription,
 * with `WaypostException` when the client is shut down.
 */
fun BuyerClient.driverLocations(driverId: String): Flow<LocationUpdate> = callbackFlow {
    val sub = trackDriver(driverId, object : LocationListener {
        override fun onLocation(update: LocationUpdate) {
            trySend(update)
        }

        override fun onRefused(code: String, message: String) {
            close(SubscriptionRefusedException("tracking:$driverId", code, message))
        }

        // Positions only: collect [driverUpdates] for trails and status.
        override fun onTrail(trail: TrailUpdate) {}
        override fun onDriverStatus(status: DriverStatusUpdate) {}
    })
    awaitClose { sub.end() }
}.conflate()

/** What [driverUpdates] emits. */
sealed interface DriverUpdate {
    /** The driver moved (its newest known position first). */
    data class Location(val update: LocationUpdate) : DriverUpdate

    /** The driver's path through a dead zone, before the position that follows it. */
    data class Trail(val trail: TrailUpdate) : DriverUpdate

    /** The driver went dark or came back. */
    data class Status(val status: DriverStatusUpdate) : DriverUpdate
}

/**
 * One driver's positions, dead-zone trails and online/offline status, in
 * the order the SDK reports them (not conflated: up to
 * [WaypostFlows.DRIVER_BUFFER] wait). Fails like [driverLocations].
 */
fun BuyerClient.driverUpdates(driverId: String): Flow<DriverUpdate> = callbackFlow {
    val what = "tracking:$driverId"
    val sub = trackDriver(driverId, object : LocationListener {
        override fun onLocation(update: LocationUpdate) {
            offerOrFail(what, WaypostFlows.DRIVER_BUFFER, DriverUpdate.Location(update))
        }

        override fun onRefused(code: String, message: String) {
            close(SubscriptionRefusedException(what, code, message))
        }

        override fun onTrail(trail: TrailUpdate) {
            offerOrFail(what, WaypostFlows.DRIVER_BUFFER, DriverUpdate.Trail(trail))
        }

        override fun onDriverStatus(status: DriverStatusUpdate) {
            offerOrFail(what, WaypostFlows.DRIVER_BUFFER, DriverUpdate.Status(status))
        }
    })
    awaitClose { sub.end() }
}.buffer(WaypostFlows.DRIVER_BUFFER)

/**
 * Everything that happens in one chat room: new messages (once per seq, in
 * order, after the last stored one), own messages' status, presence,
 * typing. Read the stored timeline with `messages(room, limit)` first.
 */
fun BuyerClient.chatEvents(room: String): Flow<ChatEvent> = callbackFlow {
    val sub = joinChat(room, object : ChatListener {
        override fun onChatEvent(event: ChatEvent) {
            if (event is ChatEvent.Refused && event.reference == "chat:$room") {
                close(SubscriptionRefusedException(event.reference, event.code, event.message))
            } else {
                offerOrFail("chat:$room", WaypostFlows.CHAT_BUFFER, event)
            }
        }
    })
    awaitClose { sub.end() }
}.buffer(WaypostFlows.CHAT_BUFFER)

/** The messages entering one room's timeline (see [chatEvents]). */
fun BuyerClient.chatMessages(room: String): Flow<ChatEntry> =
    chatEvents(room).filterIsInstance<ChatEvent.Message>().map { it.entry }

/**
 * One room's receipts: a participant (this user's other devices included)
 * delivered or read it up to a seq (see [chatEvents]; `receipts(room)` has
 * the current markers).
 */
fun BuyerClient.chatReceipts(room: String): Flow<ReceiptUpdate> =
    chatEvents(room).filterIsInstance<ChatEvent.Receipt>().map { it.update }

/** What [orderUpdates] emits. */
sealed interface OrderUpdate {
    /** A timeline entry: once per seq, in order, from seq 1. */
    data class Entry(val entry: OrderEntry) : OrderUpdate

    /** The assigned driver moved (while the order is active). */
    data class Location(val update: LocationUpdate) : OrderUpdate

    /** The driver's path through a dead zone (while the order is active). */
    data class Trail(val trail: TrailUpdate) : OrderUpdate

    /** The driver went dark or came back (while the order is active). */
    data class Status(val status: DriverStatusUpdate) : OrderUpdate
}

/**
 * One order's timeline and its driver's position. One collector per order
 * at a time: tracking an order again replaces the previous listener.
 */
fun BuyerClient.orderUpdates(orderId: String): Flow<OrderUpdate> = callbackFlow {
    val what = "order:$orderId"
    val sub = trackOrder(orderId, object : OrderListener {
        override fun onEntry(entry: OrderEntry) {
            offerOrFail(what, WaypostFlows.ORDER_BUFFER, OrderUpdate.Entry(entry))
        }

        override fun onLocation(update: LocationUpdate) {
            offerOrFail(what, WaypostFlows.ORDER_BUFFER, OrderUpdate.Location(update))
        }

        override fun onTrail(trail: TrailUpdate) {
            offerOrFail(what, WaypostFlows.ORDER_BUFFER, OrderUpdate.Trail(trail))
        }

        override fun onDriverStatus(status: DriverStatusUpdate) {
            offerOrFail(what, WaypostFlows.ORDER_BUFFER, OrderUpdate.Status(status))
        }
    })
    awaitClose { sub.end() }
}.buffer(WaypostFlows.ORDER_BUFFER)

/** Every connection state from now on (the current one first); cold. */
fun BuyerClient.connectionStates(): Flow<ConnectionState> = callbackFlow {
    val sub = watchConnectionState(object : ConnectionStateListener {
        override fun onConnectionState(state: ConnectionState) {
            trySend(state)
        }
    })
    awaitClose { sub.end() }
}.conflate()

private class StateHolder(val flow: MutableStateFlow<ConnectionState>, @Suppress("unused") val sub: Subscription)

/** One StateFlow per client, dropped with the client (weak keys, identity: uniffi objects do not override equals). */
private val stateFlows: MutableMap<BuyerClient, StateHolder> = Collections.synchronizedMap(WeakHashMap())

/**
 * The connection state as a [StateFlow], shared by every caller for this
 * client (no scope needed: the SDK sets its value). It keeps the last
 * state after `shutdown()` (`Closed`). Nothing in it references the
 * client, so it does not keep the client alive.
 */
val BuyerClient.connectionState: StateFlow<ConnectionState>
    get() = synchronized(stateFlows) {
        stateFlows.getOrPut(this) {
            val flow = MutableStateFlow(connectionState())
            val sub = watchConnectionState(object : ConnectionStateListener {
                override fun onConnectionState(state: ConnectionState) {
                    flow.value = state
                }
            })
            StateHolder(flow, sub)
        }.flow.asStateFlow()
    }

/**
 * The driver's events from now on (upload results, sampling changes,
 * evictions, ...); the newest [WaypostFlows.EVENT_BUFFER] are kept per
 * collector. The first collection of a driver also gets, first, the events
 * raised since `Driver.open` before it subscribed (`BufferRecreated`, an
 * upload that finished before the collector started, ...; the newest 256):
 * collect it right after `open` and nothing is missed.
 */
val Driver.events: Flow<DriverEvent>
    get() = callbackFlow {
        val sub = watchEvents(object : DriverListener {
            override fun onEvent(event: DriverEvent) {
                trySend(event)
            }
        })
        awaitClose { sub.end() }
    }.buffer(WaypostFlows.EVENT_BUFFER, BufferOverflow.DROP_OLDEST)

/**
 * The driver's health report: the current one first, then every change;
 * conflated (the collector sees the newest). Cancelling the collection
 * removes its listener; it does not keep the driver alive.
 */
val Driver.health: Flow<DriverHealth>
    get() = callbackFlow {
        val sub = addHealthListener(object : HealthListener {
            override fun onHealth(health: DriverHealth) {
                trySend(health)
            }
        })
        awaitClose { sub.end() }
    }.conflate()

/**
 * A [BuyerListener] that ignores everything: extend it and override only
 * what the Flows do not carry (e.g. `onError` for refused messages). Keep
 * it free of references to its client, so that the client is freed with
 * its last reference even without `close()`.
 */
open class BuyerListenerAdapter : BuyerListener {
    override fun onConnectionState(state: ConnectionState) {}
    override fun onLocation(update: LocationUpdate) {}
    override fun onMessage(message: ChatEntry) {}
    override fun onOutgoing(message: ChatEntry) {}
    override fun onPresence(update: PresenceUpdate) {}
    override fun onTyping(update: TypingUpdate) {}
    override fun onError(reference: String, code: String, message: String) {}
    override fun onTrail(trail: TrailUpdate) {}
    override fun onDriverStatus(status: DriverStatusUpdate) {}
    override fun onReceipt(update: ReceiptUpdate) {}
}
