plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "edgerec.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "edgerec.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }
    // the tested, pure-Kotlin core is compiled into the app as is (no copy)
    sourceSets["main"].java.srcDirs("src/main/kotlin", "../../core/src/main/kotlin")
    // model files must stay uncompressed so the engines can memory-map them
    androidResources { noCompress += listOf("onnx", "ort", "tflite", "json") }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.22.0")
    implementation("com.google.ai.edge.litert:litert:1.4.0")
    implementation("androidx.recyclerview:recyclerview:1.3.2")
}
