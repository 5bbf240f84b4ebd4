// The Waypost sample app. The SDK comes from io.waypost:waypost-android
// (bindings/android, an included build: its tasks cross-compile the Rust core
// with cargo-ndk and generate the Kotlin bindings; its consumer rules keep
// JNA and the bindings in minified builds).
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// Push (FCM): put your Firebase project's google-services.json next to this
// file (Firebase console → Project settings → Your apps). Without it the app
// builds and runs, only without push (Firebase is not initialised).
if (file("google-services.json").exists()) {
    apply(plugin = "com.google.gms.google-services")
}

android {
    namespace = "io.waypost.sample"
    compileSdk = 35

    defaultConfig {
        applicationId = "io.waypost.sample"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    buildTypes {
        release {
            isMinifyEnabled = true
            // JNA / bindings keep rules come with the AAR (consumer-rules.pro).
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"))
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    // The SDK (bindings + native libraries for arm64-v8a, armeabi-v7a, x86_64, x86,
    // JNA as an AAR, kotlinx-coroutines and the Flow wrappers).
    implementation("io.waypost:waypost-android:0.1.0")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("com.google.android.gms:play-services-location:21.3.0")
    implementation("androidx.core:core-ktx:1.15.0")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
    implementation("androidx.lifecycle:lifecycle-process:2.8.7")
    // DrainWorker: uploads a shift's leftovers once a network is up, app open or not.
    implementation("androidx.work:work-runtime-ktx:2.10.0")
    // Push: FirebaseMessagingService (WaypostMessagingService) and Task.await().
    implementation(platform("com.google.firebase:firebase-bom:33.7.0"))
    implementation("com.google.firebase:firebase-messaging")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-play-services:1.9.0")
}
