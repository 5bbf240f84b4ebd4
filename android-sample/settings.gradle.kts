pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "waypost-sample"
include(":app")
// The SDK's Android library, built from source: Gradle substitutes
// io.waypost:waypost-android with this build (an app outside this repository
// depends on the published AAR instead and drops this line).
includeBuild("../bindings/android")
