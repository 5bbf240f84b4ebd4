// The Waypost sample app. The Rust SDK is cross-compiled with cargo-ndk and
// its Kotlin bindings generated with the workspace's uniffi-bindgen before
// every build (tasks below); both land in build/ and are never committed.

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val waypostRoot = rootProject.file(providers.gradleProperty("waypost.root").get())
val jniOut = layout.buildDirectory.dir("rust/jniLibs")
val bindingsOut = layout.buildDirectory.dir("generated/uniffi")

android {
    namespace = "io.waypost.sample"
    compileSdk = 35

    defaultConfig {
        applicationId = "io.waypost.sample"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        release {
            isMinifyEnabled = true
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"), "proguard-rules.pro")
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }

    sourceSets["main"].apply {
        java.srcDir(bindingsOut)
        jniLibs.srcDir(jniOut)
    }
}

// 1. The native library for each ABI: libwaypost_ffi.so under build/rust/jniLibs/<abi>/.
val cargoNdk by tasks.registering(Exec::class) {
    workingDir = waypostRoot
    commandLine(
        "cargo", "ndk", "-t", "arm64-v8a", "-t", "x86_64", "--platform", "26",
        "-o", jniOut.get().asFile.absolutePath,
        "build", "--release", "-p", "waypost-ffi", "--lib",
    )
}

// 2. The Kotlin bindings, generated from the host build of the same crate.
val generateBindings by tasks.registering(Exec::class) {
    workingDir = waypostRoot
    commandLine(
        "sh", "-c",
        "cargo build -p waypost-ffi -p uniffi-bindgen && " +
            "target/debug/uniffi-bindgen generate target/debug/libwaypost_ffi.so " +
            "--language kotlin --no-format --out-dir '${bindingsOut.get().asFile.absolutePath}'",
    )
}

tasks.named("preBuild") { dependsOn(cargoNdk, generateBindings) }

dependencies {
    // JNA as an AAR: it ships libjnidispatch.so for every Android ABI.
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("com.google.android.gms:play-services-location:21.3.0")
    implementation("androidx.core:core-ktx:1.15.0")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
}
