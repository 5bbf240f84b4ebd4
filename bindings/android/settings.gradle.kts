// io.waypost:waypost-android, the Waypost SDK as an Android library (AAR).
// Standalone build (`./gradlew assembleRelease publishToMavenLocal`) or an
// included build of an app (android-sample/settings.gradle.kts).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "waypost-android"
