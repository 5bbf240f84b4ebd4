package io.waypost.sdk.test

import com.sun.jna.Platform
import io.waypost.sdk.sdkVersion
import java.io.File
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The tests consume io.waypost:waypost-jvm the way an app does: the bindings
 * and the native library come out of one JAR, and JNA loads the library from
 * the JAR's resources (no -Djna.library.path, no library next to the code).
 */
class PackagingTest {
    private val libraryResource = "${Platform.RESOURCE_PREFIX}/${System.mapLibraryName("waypost_ffi")}"

    @Test
    fun `bindings and native library come from the waypost-jvm jar`() {
        assertNull(System.getProperty("jna.library.path"), "the library must not be found through jna.library.path")

        val bindings = Class.forName("io.waypost.sdk.WaypostKt").protectionDomain.codeSource.location
        assertTrue(bindings.path.endsWith(".jar"), "generated bindings loaded from $bindings, not from a JAR")
        assertTrue(File(bindings.path).name.startsWith("waypost-jvm-"), "bindings JAR is $bindings")

        val native = javaClass.classLoader.getResource(libraryResource)
        assertTrue(native != null, "no $libraryResource on the classpath")
        assertEquals("jar", native!!.protocol, "$libraryResource is at $native, not inside a JAR")
        assertTrue(native.path.contains("/waypost-jvm-"), "$libraryResource comes from $native")
    }

    @Test
    fun `the library loaded from the jar is the one the bindings were generated from`() {
        // The first call loads the library (uniffi checks its API checksums then).
        assertEquals(System.getProperty("waypost.expected.version"), sdkVersion())
        if (Platform.isLinux()) {
            // JNA maps its extracted copy (jna<digits>.tmp); a library found on some
            // path under its own name (a cargo output, LD_LIBRARY_PATH) would show here.
            val mapped = File("/proc/self/maps").readLines().map { it.substringAfterLast(' ') }.distinct()
            val byName = mapped.filter { File(it).name == System.mapLibraryName("waypost_ffi") }
            assertTrue(byName.isEmpty(), "libwaypost_ffi loaded from outside the JAR: $byName")
        }
    }
}
