// io.waypost:waypost-android — the Waypost SDK as an Android library (AAR):
//   - jniLibs/<abi>/libwaypost_ffi.so for arm64-v8a, armeabi-v7a, x86_64, x86,
//     cross-compiled by cargo-ndk (task cargoNdk);
//   - the uniffi-generated Kotlin (task generateBindings: bindings/generate.sh
//     with this folder's uniffi.toml, from the library of whatever host builds);
//   - the coroutines wrappers (Flow / StateFlow) of bindings/kotlin/waypost-ktx;
//   - consumer-rules.pro (JNA + uniffi keep rules applied to every app);
//   - JNA as an AAR (libjnidispatch.so for every ABI).
// Needs the Android SDK + NDK, Rust with the four Android targets and cargo-ndk
// (see docs/guide-android.md). `./gradlew publishToMavenLocal` publishes it.

plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
    `maven-publish`
}

group = "io.waypost"
version = "0.1.0"

val waypostRoot: File = file(providers.gradleProperty("waypost.root").getOrElse("../.."))
val cargoProfile: String = providers.gradleProperty("waypost.cargoProfile").getOrElse("release")
val abis = listOf("arm64-v8a", "armeabi-v7a", "x86_64", "x86")
val minSdkVersion = 26
val jniOut = layout.buildDirectory.dir("rust/jniLibs")
val bindingsOut = layout.buildDirectory.dir("generated/uniffi")

android {
    namespace = "io.waypost.sdk"
    compileSdk = 35

    defaultConfig {
        minSdk = minSdkVersion
        consumerProguardFiles("consumer-rules.pro")
        ndk { abiFilters += abis }
    }
    buildTypes {
        release { isMinifyEnabled = false }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }

    sourceSets["main"].apply {
        java.srcDir(bindingsOut)
        java.srcDir(waypostRoot.resolve("bindings/kotlin/waypost-ktx/src/main/kotlin"))
        jniLibs.srcDir(jniOut)
    }
    publishing {
        singleVariant("release") {
            withSourcesJar()
        }
    }
}

// 1. libwaypost_ffi.so for each ABI, into build/rust/jniLibs/<abi>/.
val cargoNdk by tasks.registering(Exec::class) {
    description = "Cross-compiles waypost-ffi for ${abis.joinToString()} with cargo-ndk"
    workingDir = waypostRoot
    inputs.files(fileTree(waypostRoot) {
        include("Cargo.lock", "Cargo.toml", "bindings/ffi/**", "sdk-core/**", "protocol/**")
        exclude("**/target/**")
    })
    outputs.dir(jniOut)
    val args = mutableListOf("cargo", "ndk")
    abis.forEach { args += listOf("-t", it) }
    args += listOf("--platform", minSdkVersion.toString(), "-o", jniOut.get().asFile.absolutePath)
    args += listOf("build", "--locked", "--profile", cargoProfile, "-p", "waypost-ffi", "--lib")
    commandLine(args)
}

// 2. The Kotlin bindings, generated from the host build of the same crate
//    (.so on Linux, .dylib on macOS; bindings/generate.sh asks cargo where it is).
val generateBindings by tasks.registering(Exec::class) {
    description = "Generates the uniffi Kotlin bindings (Android settings from uniffi.toml)"
    workingDir = waypostRoot
    inputs.files(fileTree(waypostRoot) {
        include("Cargo.lock", "bindings/ffi/**", "sdk-core/**", "protocol/**")
        exclude("**/target/**")
    })
    inputs.file("uniffi.toml")
    outputs.dir(bindingsOut)
    commandLine(
        "bash", waypostRoot.resolve("bindings/generate.sh").absolutePath,
        "--config", file("uniffi.toml").absolutePath,
        "kotlin", bindingsOut.get().asFile.absolutePath,
    )
}

tasks.named("preBuild") { dependsOn(cargoNdk, generateBindings) }

dependencies {
    // JNA as an AAR: the JAR's desktop natives replaced by libjnidispatch.so per Android ABI.
    api("net.java.dev.jna:jna:5.19.1@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    // The generated code marks its API-34 cleaner with @RequiresApi.
    implementation("androidx.annotation:annotation:1.9.1")
}

publishing {
    publications {
        register<MavenPublication>("release") {
            groupId = "io.waypost"
            artifactId = "waypost-android"
            afterEvaluate { from(components["release"]) }
            pom {
                name.set("Waypost SDK for Android")
                description.set("Live delivery tracking and order chat: Kotlin bindings of the Rust core, with native libraries for arm64-v8a, armeabi-v7a, x86_64 and x86.")
                licenses { license { name.set("Apache-2.0") } }
            }
        }
    }
    repositories {
        // `./gradlew publish` writes a Maven repository into build/repo (upload it, or point
        // apps at it); publishToMavenLocal writes ~/.m2.
        maven { name = "buildRepo"; url = uri(layout.buildDirectory.dir("repo")) }
    }
}
