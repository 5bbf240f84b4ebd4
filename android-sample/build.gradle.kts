plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
    // Applied by :app only when its google-services.json exists (push).
    id("com.google.gms.google-services") version "4.4.2" apply false
}
